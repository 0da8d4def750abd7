"""`python -m tests.testbed.download URL [--stall S]`, run inside a namespace:
one GET, read to the end; prints JSON {bytes, sha256, seconds} or {error}. A
read that waits longer than S seconds for data counts as a stall."""
from __future__ import annotations

import argparse
import hashlib
import json
import time
import urllib.request


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--stall", type=float, default=5.0)
    args = ap.parse_args()
    started, digest, size = time.monotonic(), hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(args.url, timeout=args.stall) as resp:
            while chunk := resp.read(1 << 16):
                digest.update(chunk)
                size += len(chunk)
        out = {"bytes": size, "sha256": digest.hexdigest(), "seconds": round(time.monotonic() - started, 3)}
    except OSError as exc:
        out = {"error": f"{type(exc).__name__}: {exc}", "bytes": size}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

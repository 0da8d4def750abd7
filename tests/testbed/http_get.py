"""`python -m tests.testbed.http_get ADDR:PORT PATH [--host H] [--accept A]`,
run inside a namespace: one GET, printed as JSON {status, content_type, body}
(status 0 and the error in body if the connection failed)."""
from __future__ import annotations

import argparse
import http.client
import json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("address")
    ap.add_argument("path")
    ap.add_argument("--host")
    ap.add_argument("--accept", default="*/*")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--token", help="a private port's access token (X-Access-Token)")
    args = ap.parse_args()
    host, port = args.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=args.timeout)
    try:
        headers = {"Host": args.host or args.address, "Accept": args.accept}
        if args.token:
            headers["X-Access-Token"] = args.token
        conn.request("GET", args.path, headers=headers)
        resp = conn.getresponse()
        out = {"status": resp.status, "content_type": resp.getheader("Content-Type", ""),
               "body": resp.read().decode(errors="replace")}
    except OSError as exc:
        out = {"status": 0, "content_type": "", "body": f"error: {exc}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Test client run inside a namespace: `python -m tests.testbed.client URL [--timeout S]`.
Prints the body and exits 0, or prints the error and exits 1."""
from __future__ import annotations

import socket
import sys
import urllib.request


def main() -> int:
    url = sys.argv[1]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[2] == "--timeout" else 3.0
    if url.startswith("tcp://"):
        host, port = url[6:].rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=timeout) as s:
                s.sendall(b"ping\n")
                print(s.recv(100).decode().strip())
            return 0
        except OSError as exc:
            print(f"error: {exc}")
            return 1
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            print(resp.read().decode())
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        print(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())

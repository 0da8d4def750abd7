"""`python -m tests.testbed.accept_counter PORT FILE`: a TCP listener that
writes how many connections it has accepted to FILE after each accept (to show
that SYN probes never reach the application)."""
from __future__ import annotations

import socket
import sys


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(128)
    with open(path, "w") as f:
        f.write("0")
    print("ready", flush=True)
    accepted = 0
    while True:
        conn, _ = srv.accept()
        conn.close()
        accepted += 1
        with open(path, "w") as f:
            f.write(str(accepted))


if __name__ == "__main__":
    main()

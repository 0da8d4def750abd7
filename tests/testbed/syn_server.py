"""`python -m tests.testbed.syn_server ADDR PORT`, run inside a namespace: accepts
one TCP connection and prints the MSS option of the SYN that opened it, as it
arrived here (Linux TCP_SAVE_SYN), as JSON {mss}. Prints "ready" first."""
from __future__ import annotations

import json
import socket
import struct
import sys

TCP_SAVE_SYN, TCP_SAVED_SYN = 27, 28    # linux/tcp.h; not in the socket module


def mss_option(headers: bytes) -> int | None:
    """The MSS option of an IPv4 + TCP header (as TCP_SAVED_SYN returns it). Pure."""
    ip_len = (headers[0] & 0x0F) * 4
    tcp = headers[ip_len:]
    options = tcp[20:(tcp[12] >> 4) * 4]
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            return None
        if kind == 2 and options[i + 1] == 4:
            return int(struct.unpack_from("!H", options, i + 2)[0])
        i += options[i + 1]
    return None


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, TCP_SAVE_SYN, 1)
    sock.bind((sys.argv[1], int(sys.argv[2])))
    sock.listen(1)
    print("ready", flush=True)
    conn, _ = sock.accept()
    print(json.dumps({"mss": mss_option(conn.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, 512))}), flush=True)
    conn.close()


if __name__ == "__main__":
    main()

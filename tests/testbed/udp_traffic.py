"""Known UDP traffic for the usage-accounting tests, run inside a netns:

  echo PORT [ADDR]              echo every datagram back (prints "ready"); bind ADDR
                                on a multi-address netns, so answers leave from it
  send HOST PORT COUNT SIZE     COUNT datagrams of SIZE bytes, one at a time, each
                                waiting for its echo
  dns SERVER COUNT NAME         COUNT A queries for NAME, one at a time

`send` and `dns` print one JSON line: the UDP payload lengths sent and received
({"sent": [...], "received": [...]}), so a test can compute the IP bytes
(payload + 8 UDP + 20 IPv4) it must be billed for.
"""
from __future__ import annotations

import json
import socket
import sys

import dns.message


def echo(port: int, addr: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, port))
        print("ready", flush=True)
        while True:
            data, peer = s.recvfrom(65535)
            s.sendto(data, peer)


def exchange(host: str, port: int, payloads: list[bytes]) -> dict[str, list[int]]:
    sent: list[int] = []
    received: list[int] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3.0)
        s.connect((host, port))
        for p in payloads:
            s.send(p)
            sent.append(len(p))
            received.append(len(s.recv(65535)))   # a lost answer fails the run (timeout)
    return {"sent": sent, "received": received}


def main() -> None:
    mode = sys.argv[1]
    if mode == "echo":
        echo(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0")
    elif mode == "send":
        host, port, count, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(exchange(host, port, [bytes([i % 256]) * size for i in range(count)])))
    elif mode == "dns":
        server, count, name = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        print(json.dumps(exchange(server, 53, [dns.message.make_query(name, "A").to_wire() for _ in range(count)])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

"""UDP floods for the packet-rate limit tests, run inside a netns:

  sink ADDR PORT            (prints "ready") answer the first datagram, then
                            count the rest; once 1 s passes without one, print
                            the count and exit
  quiet-sink ADDR PORT      the same, never answering (the flow stays "new")
  send HOST PORT SECONDS [PPS]  one datagram and its answer, then 64-byte
                            datagrams as fast as possible (or at PPS) for SECONDS
  send-oneway HOST PORT SECONDS PPS  the datagrams alone, no answer asked
  flood ADDR PORT           (prints "ready") for each request datagram
                            "SECONDS [PPS]", send 64-byte datagrams back to its
                            sender as fast as possible (or at PPS) for SECONDS;
                            forever
  ask HOST PORT SECONDS [PPS]  ask a flood server for SECONDS of datagrams (at
                            PPS) and count them until 1 s passes without one

sink and ask print one JSON line: {"packets": N, "span": S}, S the seconds
from the first datagram counted to the last. A limiter passes rate x S +
burst of a flood that arrives faster than its rate for all of S, so a test
compares with that and is immune to how long the flood waited in queues
on its way. send prints {"sent": N, "seconds": S}. Why the answer first: a
UDP flow without a reply stays `ct state new`, and the host table's new-flow
rate limit policed every datagram of it (fixed since: it counts a flow's
first packet; quiet-sink and send-oneway test that). ADDR: the
servers answer from the address asked (a netns with many), as conntrack expects.
"""
from __future__ import annotations

import json
import socket
import sys
import time

PAYLOAD = b"x" * 64
IDLE_S = 1.0


def count(sock: socket.socket, first_timeout: float) -> dict[str, float]:
    sock.settimeout(first_timeout)
    sock.recv(2048)
    first = last = time.monotonic()
    packets = 1
    sock.settimeout(IDLE_S)
    while True:
        try:
            sock.recv(2048)
        except TimeoutError:
            return {"packets": packets, "span": round(last - first, 4)}
        last = time.monotonic()
        packets += 1


def blast(sock: socket.socket, seconds: float, peer: tuple[str, int] | None = None, pps: float = 0) -> int:
    """Datagrams for `seconds`, as fast as possible or (pps) paced per 64."""
    sent = 0
    start = time.monotonic()
    end = start + seconds
    while (now := time.monotonic()) < end:
        if pps and (ahead := start + sent / pps - now) > 0:
            time.sleep(ahead)
        for _ in range(64):   # check the clock once per 64 datagrams
            try:
                sock.sendto(PAYLOAD, peer) if peer else sock.send(PAYLOAD)
                sent += 1
            except OSError:   # ENOBUFS: a full queue on the way out; keep offering
                pass
    return sent


def sink(addr: str, port: int, answer: bool = True) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        s.bind((addr, port))
        print("ready", flush=True)
        if answer:
            s.settimeout(60)
            _, peer = s.recvfrom(2048)
            s.sendto(b"ok", peer)
        print(json.dumps(count(s, 60 if not answer else 10)), flush=True)


def send(host: str, port: int, seconds: float, pps: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        s.settimeout(5)
        s.send(b"hello")
        s.recv(2048)   # the flow is established: only the packet-rate limit applies
        started = time.monotonic()
        sent = blast(s, seconds, pps=pps)
        print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - started, 4)}), flush=True)


def send_oneway(host: str, port: int, seconds: float, pps: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        started = time.monotonic()
        sent = blast(s, seconds, pps=pps)
        print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - started, 4)}), flush=True)


def flood(addr: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((addr, port))
        print("ready", flush=True)
        while True:
            data, peer = s.recvfrom(2048)
            seconds, _, pps = data.decode().partition(" ")
            blast(s, float(seconds), peer, float(pps or 0))


def ask(host: str, port: int, seconds: float, pps: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        s.connect((host, port))
        s.send(f"{seconds} {pps}".encode())
        print(json.dumps(count(s, 10)), flush=True)


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode in ("sink", "quiet-sink"):
        sink(args[0], int(args[1]), answer=mode == "sink")
    elif mode == "send-oneway":
        send_oneway(args[0], int(args[1]), float(args[2]), float(args[3]))
    elif mode == "send":
        send(args[0], int(args[1]), float(args[2]), float(args[3]) if len(args) > 3 else 0)
    elif mode == "flood":
        flood(args[0], int(args[1]))
    elif mode == "ask":
        ask(args[0], int(args[1]), float(args[2]), float(args[3]) if len(args) > 3 else 0)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()

"""DNS client run inside a guest (or slot) netns (`python -m tests.testbed.dns_client
MODE SERVER[:PORT] ...`), printing one JSON line:

  ask SERVER NAME [TYPE]            {rcode, answers, types} ("timeout" if no answer in 2 s)
  bad SERVER                        what came back for a garbage datagram, a query with two
                                    questions and a 64 KiB TCP query, then a good query's rcode
  flood SERVER COUNT                COUNT A queries for distinct names under cdn.test, sent at once
                                    after a line on stdin (so the process starts before the clock does)
  probe SERVER COUNT INTERVAL_MS NAME
                                    COUNT A queries for NAME one at a time, after a line on
                                    stdin: latency percentiles (ms), lost. A NAME with "{}" asks
                                    a new name each time ("p{}.cdn.test": every one a cache miss)
"""
from __future__ import annotations

import json
import socket
import struct
import sys
import time

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

PORT = 53


def ask(server: str, name: str, rdtype: str = "A", timeout: float = 2.0) -> dict:
    try:
        msg = dns.query.udp(dns.message.make_query(name, rdtype), server, timeout=timeout, port=PORT)
    except dns.exception.Timeout:
        return {"rcode": "timeout", "answers": [], "types": []}
    return {"rcode": dns.rcode.to_text(msg.rcode()),
            "answers": [rr.to_text() for rrset in msg.answer for rr in rrset],
            "types": [dns.rdatatype.to_text(rrset.rdtype) for rrset in msg.answer]}


def _udp_reply(server: str, data: bytes, timeout: float = 1.0) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, (server, PORT))
        try:
            return dns.rcode.to_text(dns.message.from_wire(s.recv(65535)).rcode())
        except TimeoutError:
            return "dropped"


def bad(server: str) -> dict:
    out = {"garbage": _udp_reply(server, b"\x12\x34\xff\xff" + b"\x00" * 20)}
    two = dns.message.make_query("public.test", "A")
    two.question.append(dns.message.make_query("other.test", "A").question[0])
    out["two_questions"] = _udp_reply(server, two.to_wire())
    with socket.create_connection((server, PORT), timeout=2.0) as s:
        big = b"\x00" * 65535
        try:
            s.sendall(struct.pack("!H", len(big)) + big)
            data = s.recv(2)
            out["tcp_64k"] = "closed" if not data else f"answered {len(data)} bytes"
        except (ConnectionResetError, BrokenPipeError):
            out["tcp_64k"] = "closed"
        except TimeoutError:
            out["tcp_64k"] = "no answer, still open"
    # The 64 KiB query is ~46 segments: with the garbage and the two-question
    # packet it can spend the sandbox's whole kernel burst (50 packets). Let the
    # cap refill (200/s) so "good" tests the resolver, not the rate cap.
    time.sleep(0.5)
    out["good"] = ask(server, "public.test")["rcode"]
    return out


def _query(qid: int, name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)


def flood(server: str, count: int) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    queries = [_query(i & 0xFFFF, f"f{i}.cdn.test") for i in range(count)]
    print("ready", flush=True)
    sys.stdin.readline()
    started, sent = time.monotonic(), 0
    for i in range(count):
        try:
            sock.sendto(queries[i], (server, PORT))
            sent += 1
        except BlockingIOError:
            pass
    send_s = time.monotonic() - started
    sock.settimeout(1.0)
    answered = 0
    try:
        while True:
            sock.recv(4096)
            answered += 1
    except TimeoutError:
        pass
    return {"sent": sent, "send_seconds": round(send_s, 3), "answered": answered}


def probe(server: str, count: int, interval_ms: float, name: str) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    latencies, lost = [], 0
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(count):
        t0 = time.monotonic()
        sock.sendto(_query(i, name.format(i)), (server, PORT))
        try:
            while struct.unpack("!H", sock.recv(4096)[:2])[0] != i:
                pass
            latencies.append((time.monotonic() - t0) * 1e3)
        except TimeoutError:
            lost += 1
        time.sleep(max(0.0, interval_ms / 1e3 - (time.monotonic() - t0)))
    latencies.sort()

    def pick(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))], 3) if latencies else None
    return {"n": len(latencies), "lost": lost, "p50_ms": pick(50), "p99_ms": pick(99),
            "max_ms": round(latencies[-1], 3) if latencies else None}


def main() -> None:
    global PORT
    mode, where, *rest = sys.argv[1:]
    server, _, port = where.partition(":")
    PORT = int(port or 53)
    if mode == "ask":
        out = ask(server, *rest)
    elif mode == "bad":
        out = bad(server)
    elif mode == "flood":
        out = flood(server, int(rest[0]))
    else:
        out = probe(server, int(rest[0]), float(rest[1]), rest[2])
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

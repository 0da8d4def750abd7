"""DNS load generator, run inside a guest netns by the benchmark.

`python -m tests.bench.dns_load SERVER COUNT CONCURRENCY [PREFIX [DISTINCT]]` sends
COUNT A queries for names under cdn.test (`<PREFIX><i>.cdn.test`, i cycling
over DISTINCT names if given: repeated names are cache hits in the proxy) with
at most CONCURRENCY in flight, and prints JSON: qps, latency percentiles (ms)
and how many got an answer.
"""
from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time


def query(qid: int, name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)


def main() -> None:
    server, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    prefix = sys.argv[4] if len(sys.argv) > 4 else "h"
    distinct = int(sys.argv[5]) if len(sys.argv) > 5 else count
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    next_id, answered, deadline = 0, 0, time.monotonic() + 60
    started = time.monotonic()
    while (next_id < count or sent_at) and time.monotonic() < deadline:
        while next_id < count and len(sent_at) < concurrency:
            qid = next_id & 0xFFFF
            sock.sendto(query(qid, f"{prefix}{next_id % distinct}.cdn.test"), (server, 53))
            sent_at[qid] = time.monotonic()
            next_id += 1
        if select.select([sock], [], [], 1.0)[0]:
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                qid = struct.unpack("!H", data[:2])[0]
                if qid in sent_at:
                    latencies.append((time.monotonic() - sent_at.pop(qid)) * 1e3)
                    answered += int(data[3] & 0x0F == 0)
        else:
            sent_at.clear()  # lost ones: stop waiting for them
    elapsed = time.monotonic() - started
    latencies.sort()

    def pick(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))], 3) if latencies else None
    print(json.dumps({"qps": round(len(latencies) / elapsed, 1), "answered": answered, "sent": count,
                      "p50_ms": pick(50), "p99_ms": pick(99)}))


if __name__ == "__main__":
    main()

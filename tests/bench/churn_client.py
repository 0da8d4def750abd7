"""The orchestrator side of the churn bench (tests/bench/churn_bench.py): its
own process, talking to the agent over gRPC only, as an orchestrator does.

    python -m tests.bench.churn_client SOCKET EXISTING RATE SECONDS

Fills the host to EXISTING live sandboxes, then runs RATE allocate+release
cycles per second for SECONDS. Each cycle opens one TCP connection from the
new sandbox's slot netns (source: the sandbox IP, through the host's
forwarding path like a guest's flow) to the test bed's echo server, checks one
round trip, and releases with the connection still open.

Prints JSON lines: {"filled": n, "seconds": s} once the fill is done,
{"churn": true} when the cycles start, then {"start", "end", "cycles", "missed", "lag_s"}.
"""
from __future__ import annotations

import json
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from netagent import netns
from netagent.client import Client
from tests.testbed.bed import ECHO_PORT, WEB_IP


def say(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def open_flow(slot_netns: str) -> socket.socket:
    """A connection made inside the slot netns (the socket belongs to the netns
    it is created in), with one echoed byte: established on the host."""
    with netns.entered(netns.path_of(slot_netns)):
        sock = socket.create_connection((WEB_IP, ECHO_PORT), timeout=2)
    sock.sendall(b"x")
    if sock.recv(1) != b"x":
        raise RuntimeError("the echo server did not answer")
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a RST, so no FIN retransmits linger in the (reused) slot."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def fill(client: Client, existing: int) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.allocate(f"live-{k}", timeout=120), range(existing)))


def cycle(client: Client, sid: str) -> dict:
    t0 = time.perf_counter()
    net = client.allocate(sid).network
    t1 = time.perf_counter()
    flow_ok = True
    try:
        sock = open_flow(net.netns)
    except OSError:
        sock, flow_ok = None, False
    t2 = time.perf_counter()
    client.release(sid)
    t3 = time.perf_counter()
    if sock is not None:
        reset(sock)
    return {"t": t0, "allocate_ms": (t1 - t0) * 1e3, "release_ms": (t3 - t2) * 1e3, "flow_ok": flow_ok}


def churn(client: Client, rate: float, seconds: float) -> dict:
    """Open loop: cycle k starts at start + k / rate, or at once if behind; the
    run ends after `seconds` whatever was done (cycles not started in time are
    `missed`: a loaded host shows as fewer cycles, not a longer run).
    Times are perf_counter (CLOCK_MONOTONIC: the bench's sampler shares it)."""
    cycles: list[dict] = []
    start = time.perf_counter()
    planned = int(rate * seconds)
    worst_lag = 0.0
    for k in range(planned):
        due = start + k / rate
        now = time.perf_counter()
        if now >= start + seconds:
            break
        if now < due:
            time.sleep(due - now)
        worst_lag = max(worst_lag, time.perf_counter() - due)
        cycles.append(cycle(client, f"churn-{k}"))
    return {"start": start, "end": time.perf_counter(), "cycles": cycles, "missed": planned - len(cycles),
            "lag_s": round(worst_lag, 3)}


def main() -> None:
    sock_path, existing, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    with Client(socket_path=sock_path, timeout=30) as client:
        client.host_info()
        t0 = time.perf_counter()
        fill(client, existing)
        say({"filled": existing, "seconds": round(time.perf_counter() - t0, 2)})
        sys.stdin.readline()    # the bench lets the host settle, then says go
        say({"churn": True})
        say(churn(client, rate, seconds))


if __name__ == "__main__":
    main()

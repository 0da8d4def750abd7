"""Both ends of the connection-log bench (tests/bench/flow_log_bench.py).

    python -m tests.bench.flow_log_client serve PORT
        (in the internet netns) a TCP server on every address: answers one byte
        to one byte, then closes. Prints "ready".
    python -m tests.bench.flow_log_client connect SOCKET SANDBOXES RATE SECONDS PORT
        fills the host to SANDBOXES sandboxes over gRPC (the agent pins their
        neighbours, so 2,000 talking slots fit the kernel's table), waits for a line on
        stdin, then opens RATE connections a second for SECONDS, round robin
        over the sandboxes: each made inside the sandbox's slot netns (source:
        the sandbox IP, through the host's forwarding path like a guest's
        flow), one byte each way, closed with FINs. Prints JSON lines:
        {"filled", "seconds"}, then {"made", "failed", "missed", "lag_s", "start", "end",
        "flows": [[sandbox IP, source port] of each connection made]}.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from netagent import netns
from netagent.client import Client
from tests.testbed.bed import WEB_IP

THREADS = 8


def say(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


async def _serve(port: int) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await reader.read(1):
                writer.write(b"y")
                await writer.drain()
        finally:
            writer.close()
    server = await asyncio.start_server(answer, "0.0.0.0", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def connect_once(fd: int, home: int, port: int) -> tuple[str, int] | None:
    """One connection from the netns `fd`: the socket is made there (it keeps
    its netns), then used from this thread's home netns."""
    netns.setns(fd)
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        netns.setns(home)
    try:
        sock.settimeout(5)
        sock.connect((WEB_IP, port))
        sock.sendall(b"x")
        return sock.getsockname() if sock.recv(1) == b"y" else None
    except OSError:
        return None
    finally:
        sock.close()


def run(fds: list[int], rate: float, seconds: float, port: int) -> dict:
    """Open loop over THREADS threads: connection k is due at start + k / rate;
    those not started by the end are `missed` (a loaded host shows as fewer)."""
    planned = int(rate * seconds)
    counts: dict = {"made": 0, "failed": 0, "lag_s": 0.0, "flows": []}
    lock = threading.Lock()
    start = time.monotonic() + 0.2

    def worker(t: int) -> None:
        home = netns.current_fd()
        made = failed = 0
        lag = 0.0
        flows = []
        for k in range(t, planned, THREADS):
            due = start + k / rate
            now = time.monotonic()
            if now >= start + seconds:
                break
            if now < due:
                time.sleep(due - now)
            lag = max(lag, time.monotonic() - due)
            if (source := connect_once(fds[k % len(fds)], home, port)) is not None:
                made += 1
                flows.append(source)
            else:
                failed += 1
        os.close(home)
        with lock:
            counts["made"] += made
            counts["failed"] += failed
            counts["flows"] += flows
            counts["lag_s"] = max(counts["lag_s"], lag)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    done = counts["made"] + counts["failed"]
    return {**counts, "missed": planned - done, "lag_s": round(counts["lag_s"], 3), "start": start,
            "end": time.monotonic(), "start_unix": time.time() - (time.monotonic() - start)}


def main() -> None:
    if sys.argv[1] == "serve":
        asyncio.run(_serve(int(sys.argv[2])))
        return
    sock_path, count, rate, seconds, port = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), \
        float(sys.argv[5]), int(sys.argv[6])
    with Client(socket_path=sock_path, timeout=120) as client:
        client.host_info()
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            nets = list(pool.map(lambda k: client.allocate(f"fl-{k}", timeout=300).network, range(count)))
        filled = time.monotonic() - t0
    say({"filled": count, "seconds": round(filled, 2)})
    fds = [os.open(n.netns_path, os.O_RDONLY | os.O_CLOEXEC) for n in nets]
    sys.stdin.readline()   # the bench lets the host settle, then says go
    say(run(fds, rate, seconds, port))


if __name__ == "__main__":
    main()

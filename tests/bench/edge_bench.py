"""Edge benchmark on loopback: the same keep-alive HTTP/1.1 load sent straight to an
upstream server and through `netagent edge` (SQLite registry), in the same run.

  python -m tests.bench.edge_bench [--seconds 3] [--connections 16]

Three processes share the machine: the upstream (asyncio Protocol, a 64-byte
200 answer), the edge (a subprocess, logging at INFO to /dev/null) and this
client. Targets: direct; the edge as configured by default (registry answers
cached 250 ms); the edge with --cache-ms 0 (a registry read per request). Each
gets a serial run (1 connection: latency) and a concurrent run (--connections:
requests/s and latency under load). Prints JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

from netagent.registry import NodeRecord, PortRecord, SandboxRecord
from netagent.registry.sqlite import SqliteRegistry
from tests.edge.helpers import wait_listening

LOOPBACK = "127.0.0.1"
DOMAIN = "sbx.bench.test"
BODY = b"x" * 64


class _UpstreamProtocol(asyncio.Protocol):
    """Answers every request head with the same small 200 (requests carry no body)."""

    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4:]
            self.transport.write(self.RESPONSE)  # type: ignore[attr-defined]


async def serve_upstream() -> None:
    server = await asyncio.get_running_loop().create_server(_UpstreamProtocol, LOOPBACK, 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


async def one_connection(port: int, host: str, deadline: float, warmup_until: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    request = f"GET /bench?q=1 HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edge-bench\r\n\r\n".encode()
    try:
        while (start := time.perf_counter()) < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer {head[:60]!r}")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if start >= warmup_until:
                latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def load(port: int, host: str, connections: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    now = time.perf_counter()
    warmup_until, deadline = now + 0.5, now + 0.5 + seconds
    await asyncio.gather(*(one_connection(port, host, deadline, warmup_until, latencies)
                           for _ in range(connections)))
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3)

    return {"requests": len(latencies), "rps": round(len(latencies) / seconds), "p50_ms": pct(0.50),
            "p99_ms": pct(0.99)}


async def measure(port: int, host: str, connections: int, seconds: float) -> dict[str, dict[str, float]]:
    return {"serial": await load(port, host, 1, seconds), "concurrent": await load(port, host, connections, seconds)}



def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run(seconds: float, connections: int) -> dict:
    procs: list[subprocess.Popen] = []
    try:
        upstream = subprocess.Popen([sys.executable, "-m", "tests.bench.edge_bench", "--serve-upstream"],
                                    stdout=subprocess.PIPE, text=True)
        procs.append(upstream)
        assert upstream.stdout is not None
        upstream_port = int(upstream.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            registry = SqliteRegistry(f"sqlite:///{tmp}/registry.db")
            await registry.connect()
            await registry.refresh(NodeRecord("node-1", LOOPBACK, time.time()), [], 3600)   # v2: node alive
            await registry.put_sandbox(SandboxRecord("bench", "node-1", LOOPBACK, 1, time.time(), (
                PortRecord(3000, "tcp", upstream_port, True, 0.0, 0.0),)), ttl_s=3600)
            await registry.close()
            out: dict = {"setup": {"seconds": seconds, "connections": connections, "cpus": os.cpu_count(),
                                   "response_body_bytes": len(BODY), "registry": "sqlite"}}
            out["direct"] = await measure(upstream_port, f"{LOOPBACK}:{upstream_port}", connections, seconds)
            for name, extra in (("edge", []), ("edge_no_cache", ["--cache-ms", "0"])):
                edge_port = free_port()
                edge = subprocess.Popen([sys.executable, "-m", "netagent", "edge", "--registry", registry.url,
                                         "--domain", DOMAIN, "--listen", f"{LOOPBACK}:{edge_port}", *extra],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(edge)
                await wait_listening(edge_port, edge)
                out[name] = await measure(edge_port, f"3000-bench.{DOMAIN}", connections, seconds)
                stop(edge)
                out[f"ratios_{name}_over_direct"] = {
                    f"{mode}_{figure}": round(out[name][mode][figure] / out["direct"][mode][figure], 2)
                    for mode in ("serial", "concurrent") for figure in ("p50_ms", "p99_ms", "rps")}
                out[f"added_latency_ms_{name}"] = {
                    p: round(out[name]["serial"][p] - out["direct"]["serial"][p], 3) for p in ("p50_ms", "p99_ms")}
            return out
    finally:
        for proc in reversed(procs):
            stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_upstream:
        asyncio.run(serve_upstream())
        return
    print(json.dumps(asyncio.run(run(args.seconds, args.connections)), indent=2))


if __name__ == "__main__":
    main()

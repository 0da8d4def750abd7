"""Public URLs through a sandbox's life (issue 24), through a real HAProxy edge on loopback.

  python -m tests.bench.urls_bench [--requests 1000]

just_opened: the registry says a port is closed (its last probe), the edge knows
that, then a server starts listening on the port and one request is sent at once:
no answer may be 502 (target: 0 false 502s of 1,000). Also the latency of those
requests and of a 502 for a port that stays closed (tried, refused, answered).
wake: a paused sandbox with wake on request; one request; the resume hook (a
server in the bench) writes the live record and answers. Figure: from the record's
write to the first byte of the guest's answer at the client (target p99 <= 100 ms),
and from the hook call to that byte. SQLite registry (polled every 20 ms) and Redis
(published).
tcp: raw TCP through the edge's --tcp-listen and its 443 front (--tcp-on-https), TLS
by SNI, against the same server straight: iperf3 through a socat TLS client, and the
time from connect to the first answer (tcp_path.py).
Prints JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from netagent.edge.wakehook import ResumeHook
from netagent.edge.waker import Waker
from netagent.registry import open_registry
from netagent.registry.sqlite import SqliteRegistry
from tests.bench.run import summary
from tests.bench.tcp_path import tcp_path
from tests.edge.hap import DOMAIN, eventually, running_edge
from tests.edge.helpers import LOOPBACK, RawClient, UpstreamServer, free_port, sandbox
from tests.edge.hook import HookServer
from tests.testbed.haproxy_proc import loopback_port
from tests.testbed.redis_proc import RedisServer

KEY = b"bench-key-" * 4


async def _status(edge_port: int, host: str) -> int:
    async with await RawClient.open(edge_port) as client:
        return (await client.request("GET", "/", host)).status


async def _serve_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    writer.close()


async def just_opened(requests: int, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    registry = SqliteRegistry(f"sqlite:///{workdir}/registry.db")
    await registry.connect()
    try:
        ports = [free_port() for _ in range(requests)]
        for i, port in enumerate(ports):
            await registry.put_sandbox(sandbox(f"jo{i}", {3000: (port, False)}), ttl_s=600)
        async with running_edge(workdir / "edge", registry, connect_timeout_s=1.0) as (haproxy, _):
            edge = haproxy.http_port
            closed_ms = []
            for i in range(requests):                      # the edge knows every record: closed, 502
                started = time.monotonic()
                await eventually(lambda i=i: _is_502(edge, f"3000-jo{i}.{DOMAIN}"), timeout_s=30)
                closed_ms.append((time.monotonic() - started) * 1000)
            statuses: dict[int, int] = {}
            opened_ms = []
            for i, port in enumerate(ports):
                server = await asyncio.start_server(_serve_once, LOOPBACK, port)
                try:
                    started = time.monotonic()
                    status = await _status(edge, f"3000-jo{i}.{DOMAIN}")
                    opened_ms.append((time.monotonic() - started) * 1000)
                finally:
                    server.close()
                    await server.wait_closed()
                statuses[status] = statuses.get(status, 0) + 1
    finally:
        await registry.close()
    return {"requests": requests, "false_502": statuses.get(502, 0), "statuses": statuses,
            "just_opened_ms": summary(opened_ms), "closed_502_ms": summary(closed_ms),
            "target_false_502": 0}


async def _is_502(edge: int, host: str) -> bool:
    return await _status(edge, host) == 502


async def wake(samples: int, workdir: Path, registry_url: str = "") -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    registry = open_registry(registry_url or f"sqlite:///{workdir}/registry.db")
    await registry.connect()
    guest = await UpstreamServer().start()
    live_at: dict[str, float] = {}

    async def resume(sid: str) -> None:
        await registry.put_sandbox(sandbox(sid, {3000: (guest.port, True)}, seq=3), ttl_s=600)
        live_at[sid] = time.monotonic()
    hook = await HookServer(KEY, resume).start()
    after_live, after_call = [], []
    try:
        for i in range(samples):
            rec = sandbox(f"wk{i}", {3000: (guest.port, False)}, seq=2)
            await registry.put_sandbox(replace(rec, paused=True, wake=True), ttl_s=600)
        waker_port = loopback_port()
        async with running_edge(workdir / "edge", registry, waker=f"127.0.0.1:{waker_port}") as (haproxy, control):
            waker = Waker(lambda sid: control.mirror.by_sandbox.get(sid), ResumeHook(hook.url, KEY), 30.0)
            await waker.start(LOOPBACK, waker_port)
            try:
                for i in range(samples):
                    sid = f"wk{i}"
                    await eventually(lambda sid=sid: _has(control, sid, "wake"), timeout_s=30)
                    first_byte = await _first_byte(haproxy.http_port, f"3000-{sid}.{DOMAIN}")
                    after_live.append((first_byte - live_at[sid]) * 1000)
                    after_call.append((first_byte - hook.calls[-1].received_at) * 1000)
            finally:
                await waker.stop()
    finally:
        await hook.stop()
        await guest.stop()
        await registry.close()
    return {"samples": samples, "hook_calls": len(hook.calls), "live_to_first_byte_ms": summary(after_live),
            "hook_call_to_first_byte_ms": summary(after_call), "target_p99_ms": 100,
            "meets_target": summary(after_live)["p99"] <= 100}


async def _has(control, sid: str, state: str) -> bool:
    return (control.mirror.by_sandbox.get(sid) or {}).get(sid) == state


async def _first_byte(port: int, host: str) -> float:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(f"GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert await reader.read(1) == b"H"
        at = time.monotonic()
        rest = await reader.read()
        assert rest.startswith(b"TTP/1.1 200"), rest[:100]
        return at
    finally:
        writer.close()


async def run(requests: int, wakes: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = {"loadavg_start": os.getloadavg()[0], "just_opened": await just_opened(requests, Path(tmp) / "jo")}
        out["wake_sqlite"] = await wake(wakes, Path(tmp) / "wake")
        (Path(tmp) / "redis").mkdir()
        redis = RedisServer(Path(tmp) / "redis")
        redis.start()
        try:
            out["wake_redis"] = await wake(wakes, Path(tmp) / "wake-redis", redis.url)
        finally:
            redis.kill()
        out["tcp"] = await tcp_path(Path(tmp) / "tcp", seconds=3, connects=200, rounds=3)
        out["loadavg_end"] = os.getloadavg()[0]
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000, help="requests to just-opened ports")
    ap.add_argument("--wakes", type=int, default=100, help="wake samples")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.requests, args.wakes)), indent=2))


if __name__ == "__main__":
    main()

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
tcp: raw TCP through --tcp-listen (TLS by SNI) against the same sink straight: the
throughput of one connection (200 MB) and the time from connect to the first answer.
Prints JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from netagent.edge.wakehook import ResumeHook
from netagent.edge.waker import Waker
from netagent.registry import open_registry
from netagent.registry.sqlite import SqliteRegistry
from tests.bench.run import summary
from tests.edge.hap import DOMAIN, eventually, running_edge
from tests.edge.helpers import LOOPBACK, RawClient, UpstreamServer, free_port, sandbox
from tests.edge.hook import HookServer
from tests.testbed.haproxy_proc import loopback_port
from tests.testbed.redis_proc import RedisServer
from tests.testbed.tls import wildcard_pem

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


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads a 4-byte length, then that many bytes; answers b"ok". A zero length: echo one ping."""
    try:
        size = int.from_bytes(await reader.readexactly(4), "big")
        left = size
        while left and (chunk := await reader.read(min(left, 1 << 20))):
            left -= len(chunk)
        writer.write(b"ok")
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _tcp_session(port: int, size: int, ssl_ctx: ssl.SSLContext | None, sni: str) -> tuple[float, float]:
    """(connect+handshake+first answer seconds for size 0, or transfer seconds)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ssl_ctx,
                                                   server_hostname=sni if ssl_ctx else None)
    try:
        writer.write(size.to_bytes(4, "big"))
        block = b"x" * (1 << 20)
        for _ in range(size >> 20):
            writer.write(block)
            await writer.drain()
        assert await reader.readexactly(2) == b"ok"
        return time.monotonic() - started, size
    finally:
        writer.close()


async def tcp_path(workdir: Path, megabytes: int, connects: int) -> dict:
    """Raw TCP through --tcp-listen (TLS by SNI) against the sink straight (plain TCP, as
    the DNATed port is): throughput of one connection, and connect-to-first-answer time."""
    workdir.mkdir(parents=True, exist_ok=True)
    ca, pem = wildcard_pem(workdir / "pki", DOMAIN)
    sink = await asyncio.start_server(_sink, LOOPBACK, 0)
    sink_port = sink.sockets[0].getsockname()[1]
    registry = SqliteRegistry(f"sqlite:///{workdir}/registry.db")
    await registry.connect()
    out: dict = {}
    try:
        await registry.put_sandbox(sandbox("tcpb", {5432: (sink_port, True)}), ttl_s=600)
        tcp_port = loopback_port()
        async with running_edge(workdir / "edge", registry, tls_pem=str(pem), tcp_listen=(f"127.0.0.1:{tcp_port}",)):
            ctx = ssl.create_default_context(cafile=str(ca))
            sni = f"5432-tcpb.{DOMAIN}"
            await eventually(lambda: _tcp_ok(tcp_port, ctx, sni), timeout_s=10)
            for name, port, c in (("direct", sink_port, None), ("edge_tls", tcp_port, ctx)):
                secs, size = await _tcp_session(port, megabytes << 20, c, sni)
                connect = [(await _tcp_session(port, 0, c, sni))[0] * 1000 for _ in range(connects)]
                out[name] = {"mbytes_per_s": round(size / secs / 1e6, 1), "connect_ms": summary(connect)}
    finally:
        sink.close()
        await registry.close()
    out["throughput_ratio"] = round(out["edge_tls"]["mbytes_per_s"] / out["direct"]["mbytes_per_s"], 3)
    out["added_connect_p50_ms"] = round(out["edge_tls"]["connect_ms"]["p50"] - out["direct"]["connect_ms"]["p50"], 3)
    out["note"] = "one Python client and sink in this process: TLS is the client's (Python ssl) work as well"
    return out


async def _tcp_ok(port: int, ctx: ssl.SSLContext, sni: str) -> bool:
    try:
        await _tcp_session(port, 0, ctx, sni)
        return True
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        return False


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
        out["tcp"] = await tcp_path(Path(tmp) / "tcp", megabytes=200, connects=200)
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

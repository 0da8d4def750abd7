"""Public URLs through a sandbox's life (issue 24), through a real HAProxy edge on loopback.

  python -m tests.bench.urls_bench [--requests 1000]

just_opened: the registry says a port is closed (its last probe), the edge knows
that, then a server starts listening on the port and one request is sent at once:
no answer may be 502 (target: 0 false 502s of 1,000). Also the latency of those
requests and of a 502 for a port that stays closed (tried, refused, answered).
Prints JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from netagent.registry.sqlite import SqliteRegistry
from tests.bench.run import summary
from tests.edge.hap import DOMAIN, eventually, running_edge
from tests.edge.helpers import LOOPBACK, RawClient, free_port, sandbox


async def _status(edge_port: int, host: str) -> int:
    async with await RawClient.open(edge_port) as client:
        return (await client.request("GET", "/", host)).status


async def _serve_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    writer.close()


async def just_opened(requests: int, workdir: Path) -> dict:
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


async def run(requests: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = {"loadavg_start": os.getloadavg()[0], "just_opened": await just_opened(requests, Path(tmp))}
        out["loadavg_end"] = os.getloadavg()[0]
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.requests)), indent=2))


if __name__ == "__main__":
    main()

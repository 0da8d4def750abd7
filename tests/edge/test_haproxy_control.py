"""The control plane keeps HAProxy's maps equal to the registry: changes through
Redis pub/sub (no polling) and SQLite polling, expiry, and full resyncs after a
lost subscription or a HAProxy restart."""
from __future__ import annotations

import asyncio
import subprocess
import sys

from netagent.registry import SandboxRecord
from netagent.registry.redis import RedisRegistry
from tests.testbed.haproxy_proc import HAProxy

from .hap import DOMAIN, eventually, running_edge
from .helpers import RawClient, UpstreamServer, free_port, sandbox


def host(sandbox_id: str, port: int = 3000) -> str:
    return f"{port}-{sandbox_id}.{DOMAIN}"


async def is_status(port: int, name: str, status: int) -> bool:
    async with await RawClient.open(port) as client:
        return (await client.request("GET", "/", name)).status == status


async def test_redis_changes_arrive_by_publish(tmp_path, redis_server, upstream: UpstreamServer) -> None:
    registry = RedisRegistry(redis_server.url)
    await registry.connect()
    try:
        await registry.put_sandbox(sandbox("r1", {3000: (upstream.port, True)}), ttl_s=60)
        async with running_edge(tmp_path / "edge", registry) as (haproxy, control):
            port = haproxy.http_port
            assert await is_status(port, host("r1"), 200)          # from the snapshot
            closed = free_port()
            for seq, (sid, to, want) in enumerate([("r2", upstream.port, 200), ("r1", closed, 502)], start=2):
                await registry.put_sandbox(sandbox(sid, {3000: (to, to != closed)}, seq=seq), ttl_s=60)
                took = await eventually(lambda sid=sid, want=want: is_status(port, host(sid), want), every_s=0.005)
                assert took < 0.2
            await registry.put_sandbox(SandboxRecord.tombstone("r2", "node-1", 9, 0.0), ttl_s=60)
            await eventually(lambda: is_status(port, host("r2"), 404))
            # A record that expires without any write goes too (TTL tracked from the message).
            await registry.put_sandbox(sandbox("short", {3000: (upstream.port, True)}), ttl_s=0.5)
            await eventually(lambda: is_status(port, host("short"), 200))
            took = await eventually(lambda: is_status(port, host("short"), 404), timeout_s=3)
            assert took <= 0.5 + 0.5
            assert control.full_syncs == 1

            # Redis restarts empty: the subscription is lost, the edge resyncs to the empty registry.
            redis_server.kill()
            redis_server.start()
            await eventually(lambda: is_status(port, host("r1"), 404), timeout_s=5)
            assert control.full_syncs >= 2
            await registry.put_sandbox(sandbox("r3", {3000: (upstream.port, True)}), ttl_s=60)
            await eventually(lambda: is_status(port, host("r3"), 200))
    finally:
        await registry.close()


async def test_sqlite_expiry_and_a_haproxy_restart(tmp_path, registry, upstream: UpstreamServer) -> None:
    await registry.put_sandbox(sandbox("s1", {3000: (upstream.port, True)}), ttl_s=60)
    await registry.put_sandbox(sandbox("short", {3000: (upstream.port, True)}), ttl_s=0.5)
    async with running_edge(tmp_path / "edge", registry) as (haproxy, control):
        port = haproxy.http_port
        assert await is_status(port, host("s1"), 200)
        await eventually(lambda: is_status(port, host("short"), 404), timeout_s=2.5)   # TTL 0.5 s + check 1 s
        haproxy.restart()                       # a new process loads its (empty) map files
        took = await eventually(lambda: is_status(port, host("s1"), 200), timeout_s=5)
        assert took <= 2.5 and control.full_syncs == 2


async def test_edge_cli_runs_the_control_plane(tmp_path, registry, upstream: UpstreamServer) -> None:
    """`netagent edge --write-haproxy-config` then `netagent edge --haproxy-socket` as processes."""
    await registry.put_sandbox(sandbox("cli1", {3000: (upstream.port, True)}), ttl_s=60)
    haproxy = HAProxy.for_test(tmp_path / "edge", DOMAIN)
    s = haproxy.settings
    common = ["--domain", DOMAIN, "--map-dir", s.map_dir, "--shards", str(s.shards), "--haproxy-socket",
              s.admin_socket]
    out = subprocess.run([sys.executable, "-m", "netagent", "edge", *common, "--errors-dir", s.errors_dir,
                          "--http-listen", s.http_listen[0], "--write-haproxy-config", str(haproxy.config_path)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(haproxy.config_path)
    haproxy.start()
    proc = subprocess.Popen([sys.executable, "-m", "netagent", "edge", *common, "--registry", registry.url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await eventually(lambda: is_status(haproxy.http_port, host("cli1"), 200), timeout_s=10)
        await registry.put_sandbox(sandbox("cli1", {3000: (free_port(), False)}, seq=2), ttl_s=60)
        await eventually(lambda: is_status(haproxy.http_port, host("cli1"), 502))
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        haproxy.stop()

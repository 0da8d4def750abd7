"""The control plane keeps HAProxy's maps equal to the registry: changes through
Redis pub/sub (no polling) and SQLite polling, expiry, and full resyncs after a
lost subscription or a HAProxy restart."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request

from netagent.registry import SandboxRecord
from netagent.registry.redis import RedisRegistry
from tests.testbed.haproxy_proc import HAProxy

from .hap import DOMAIN, eventually, running_edge
from .helpers import RawClient, UpstreamServer, free_port, sandbox


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


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
        haproxy.restart()                       # a new process loads the map files: s1 is there
        assert await is_status(port, host("s1"), 200)
        # The control plane loads its state into the new process (no registry read), which sets the flag.
        await eventually(lambda: is_status(port, host("nobody"), 404), timeout_s=5)
        assert haproxy.proc is not None and control.haproxy_pid == str(haproxy.proc.pid)
        assert (control.pushes, control.full_syncs) == (2, 1)
        # The edge's metrics: in sync again, with the one record, and no registry read for the restart.
        figure = control.metrics.registry.get_sample_value
        assert figure("netagent_edge_in_sync") == 1 and figure("netagent_edge_records") == 1
        assert figure("netagent_edge_full_syncs_total") == 1


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
    metrics_port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "netagent", "edge", *common, "--registry", registry.url,
                             "--metrics-address", f"127.0.0.1:{metrics_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await eventually(lambda: is_status(haproxy.http_port, host("cli1"), 200), timeout_s=10)
        await registry.put_sandbox(sandbox("cli1", {3000: (free_port(), False)}, seq=2), ttl_s=60)
        await eventually(lambda: is_status(haproxy.http_port, host("cli1"), 502))
        # --metrics-address serves the sync figures: in sync, one record, the change's map ops.
        figures = await asyncio.to_thread(scrape, metrics_port)
        assert figures["netagent_edge_in_sync"] == 1 and figures["netagent_edge_records"] == 1
        assert figures["netagent_edge_map_ops_total"] >= 1
        assert figures["netagent_edge_in_sync_timestamp_seconds"] > 0
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        haproxy.stop()

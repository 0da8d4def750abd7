"""Registry load that scales with change (docs/registry.md, "Liveness"): one node
record per host, heartbeated; sandbox records (schema v2) written only on change
and served while their node lives. On SQLite and a real redis-server: the
heartbeat writes no sandbox record, a killed publisher's sandboxes leave the
registry and the edge's feed within the TTL, an emptied Redis is refilled within
5 s, and a record of an unknown schema version is refused, never overwritten
and never served."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis

from netagent.edge.feeds import open_feed
from netagent.edge.liveness import Change, NodeLiveness
from netagent.edge.maps import unreadable_entries
from netagent.registry import NodeRecord, PortRecord, SandboxRecord, Verdict, open_registry
from netagent.registry.base import UnreadableRecord
from netagent.registry.publisher import RegistryPublisher

NODE = "node-a"
ADDRESS = "10.0.0.1"
SANDBOXES = 50


@pytest.fixture(params=["sqlite", "redis"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'registry.db'}"
    return request.getfixturevalue("redis_server").url


class Host:
    """A publisher with synthetic sandboxes (the real publisher code, no datapath)."""

    def __init__(self, url: str, ttl_s: float, heartbeat_s: float) -> None:
        self.live = {f"sbx-{i}" for i in range(SANDBOXES)}
        self.publisher = RegistryPublisher(open_registry(url), self.node, self.record, lambda: sorted(self.live),
                                           ttl_s=ttl_s, heartbeat_s=heartbeat_s)

    def node(self) -> NodeRecord:
        return NodeRecord(NODE, ADDRESS, time.time(), sandboxes=len(self.live))

    def record(self, sid: str, seq: int) -> SandboxRecord | None:
        if sid not in self.live:
            return None
        return SandboxRecord(sid, NODE, ADDRESS, seq, time.time(),
                             (PortRecord(8080, "tcp", 30000 + int(sid[4:]), True, 1.0, 2.0),))


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10.0) -> float:
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < timeout_s, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_heartbeats_write_no_sandbox_record_only_changes_do(registry_url: str) -> None:
    host = Host(registry_url, ttl_s=3, heartbeat_s=0.1)
    reader = open_registry(registry_url)
    host.publisher.start()
    try:
        async def all_published() -> bool:
            return host.publisher.writes >= SANDBOXES
        await until(all_published, "the first full push")
        assert host.publisher.writes == SANDBOXES and host.publisher.full_pushes == 1
        await asyncio.sleep(1.0)                          # about ten heartbeats
        assert host.publisher.writes == SANDBOXES        # none of them rewrote a sandbox record
        assert host.publisher.full_pushes == 1
        assert await reader.get_sandbox("sbx-7") is not None       # still served: the node lives

        host.live.discard("sbx-7")                       # one change, one write
        host.publisher.mark("sbx-7")

        async def released() -> bool:
            return await reader.get_sandbox("sbx-7") is None
        await until(released, "the release")
        await asyncio.sleep(0.3)
        assert host.publisher.writes == SANDBOXES + 1
    finally:
        await host.publisher.stop()
        await reader.close()


async def test_a_killed_publishers_sandboxes_are_gone_from_registry_and_feed_within_the_ttl(
        registry_url: str) -> None:
    """...and back in the feed when the host returns (its agent restarted)."""
    ttl_s = 1.0
    host = Host(registry_url, ttl_s=ttl_s, heartbeat_s=0.2)
    back = Host(registry_url, ttl_s=ttl_s, heartbeat_s=0.2)
    reader = open_registry(registry_url)
    feed = open_feed(open_registry(registry_url))
    host.publisher.start()
    try:
        async def all_published() -> bool:
            return host.publisher.writes >= SANDBOXES
        await until(all_published, "the first full push")
        served = {c.sandbox_id for c in await feed.snapshot()}
        assert served == host.live
        await host.publisher.stop()                       # killed: no release, no more heartbeats
        last_heartbeat = (await reader.get_node(NODE)).heartbeat_at     # taken just before its refresh
        removed: set[str] = set()
        while removed != host.live:
            assert time.time() < last_heartbeat + ttl_s + 1.0, f"feed removed {len(removed)} within the TTL + 1 s"
            removed |= {c.sandbox_id for c in await feed.changes() if not c.entries}
        after = time.time() - last_heartbeat
        assert await reader.get_sandbox("sbx-3") is None
        assert await reader.get_node(NODE) is None
        assert after >= ttl_s - 0.05, f"removed {after:.2f} s after the last heartbeat: before its node expired"

        back.publisher.start()                            # the same node id again
        served: set[str] = set()
        restarted = time.monotonic()
        while served != back.live:
            assert time.monotonic() - restarted < 5.0, f"feed served {len(served)} again within 5 s"
            served |= {c.sandbox_id for c in await feed.changes() if c.entries}
    finally:
        await host.publisher.stop()
        await back.publisher.stop()
        await feed.close()
        await feed.registry.close()
        await reader.close()


async def test_an_emptied_redis_is_refilled_within_5_s_by_the_heartbeat(redis_server) -> None:
    host = Host(redis_server.url, ttl_s=10, heartbeat_s=3)       # the defaults
    reader = open_registry(redis_server.url)
    host.publisher.start()
    raw = redis.Redis(unix_socket_path=str(redis_server.socket_path))
    try:
        async def all_published() -> bool:
            return host.publisher.writes >= SANDBOXES
        await until(all_published, "the first full push")
        raw.flushall()                                   # the same connection stays up: no outage is seen

        async def refilled() -> bool:
            return all([await reader.get_sandbox(f"sbx-{i}") for i in range(SANDBOXES)])
        took = await until(refilled, "the refill", timeout_s=5.0)
        assert host.publisher.full_pushes == 2, took
    finally:
        raw.close()
        await host.publisher.stop()
        await reader.close()


def write_raw_sandbox(registry_url: str, sandbox_id: str, raw: str) -> None:
    """A sandbox record as a newer agent would store it, bypassing our encoder."""
    if registry_url.startswith("sqlite://"):
        with sqlite3.connect(registry_url[len("sqlite://"):]) as db:
            db.execute("INSERT OR REPLACE INTO sandboxes (sandbox_id, node_id, seq, deleted, expires_at, record, "
                       "change_id) VALUES (?, ?, 1, 0, ?, ?, 1)", (sandbox_id, NODE, time.time() + 60, raw))
    else:
        redis.Redis(unix_socket_path=registry_url[len("unix://"):]).set(f"netagent:sbx:{sandbox_id}", raw, px=60_000)


async def test_a_record_of_an_unknown_schema_version_is_refused_never_overwritten_nor_served(
        registry_url: str) -> None:
    reg = open_registry(registry_url)
    feed = open_feed(open_registry(registry_url))
    try:
        await reg.refresh(NodeRecord(NODE, ADDRESS, time.time()), [], 60)
        newer = json.dumps({"v": 3, "sandbox_id": "sbx-new", "node_id": NODE, "seq": 1, "deleted": False,
                            "node_address": ADDRESS, "ports": {}, "updated_at": time.time()})
        write_raw_sandbox(registry_url, "sbx-new", newer)
        with pytest.raises(UnreadableRecord, match="unsupported sandbox record version 3 .this reader knows 1, 2"):
            await reg.get_sandbox("sbx-new")
        ours = SandboxRecord("sbx-new", NODE, ADDRESS, 99, time.time())
        assert await reg.write_sandbox(ours, 60, claim=True) == Verdict.UNREADABLE
        with pytest.raises(UnreadableRecord):
            await reg.get_sandbox("sbx-new")              # still the newer record
        # The edge keeps the sandbox id but serves none of its ports (502).
        assert [c.entries for c in await feed.snapshot() if c.sandbox_id == "sbx-new"] == [
            unreadable_entries("sbx-new")]
    finally:
        await feed.close()
        await feed.registry.close()
        await reg.close()


def test_node_liveness_serves_records_only_while_their_node_lives() -> None:
    nodes = NodeLiveness()
    entries = {"sbx-1": "x"}
    assert nodes.record("sbx-1", "node-a", entries) is None            # node not known alive: held back
    assert nodes.unknown({"node-a"}) == {"node-a"}
    assert nodes.node_alive("node-a", 10.0) == [Change("sbx-1", entries)]
    assert nodes.node_alive("node-a", 20.0) == []                      # a later heartbeat: nothing new
    assert nodes.due(15.0) == [] and nodes.due(20.0) == ["node-a"]
    assert nodes.node_dead("node-a") == [Change("sbx-1", {})]
    assert nodes.record("sbx-1", "node-a", {"sbx-1": "y"}) is None    # dead: still held back
    assert nodes.node_alive("node-a", 30.0) == [Change("sbx-1", {"sbx-1": "y"})]   # it came back
    assert nodes.record("sbx-1", "node-b", entries) == Change("sbx-1", {})          # moved to a dead node
    assert nodes.record("sbx-1", "node-b", {}) == Change("sbx-1", {})               # released
    assert nodes.node_alive("node-b", 5.0) == []

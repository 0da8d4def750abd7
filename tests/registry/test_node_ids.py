"""One agent per node id: a second agent using a live node id is refused at start
and, if it runs anyway (the registry was down at its start), publishes nothing
under that id while the first lives (docs/registry.md, "Node ids")."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest
import redis

from netagent.config import Config
from netagent.errors import ConfigError
from netagent.metrics import Metrics
from netagent.reachability.tracker import AgentLink, Reachability
from netagent.registry import NodeRecord, RegistryError, SandboxRecord, open_registry
from netagent.registry.base import NodeIdInUse
from netagent.registry.ownership import node_id_taken
from netagent.registry.publisher import RegistryPublisher
from netagent.state import StateStore


def node(instance: str | None, address: str = "10.0.0.1", node_id: str = "node-a") -> NodeRecord:
    return NodeRecord(node_id, address, time.time(), extra={"instance": instance} if instance else {})


def test_node_id_taken_only_by_another_live_instance() -> None:
    assert node_id_taken(None, "i-1") is False                 # no live record
    assert node_id_taken(node("i-1"), "i-1") is False          # ourselves (a restart)
    assert node_id_taken(node("i-2"), "i-1") is True           # another agent
    assert node_id_taken(node(None), "i-1") is False           # an older agent: cannot tell
    assert node_id_taken(node("i-2"), "") is False             # an agent that does not say


@pytest.fixture(params=["sqlite", "redis"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'registry.db'}"
    return request.getfixturevalue("redis_server").url


async def test_a_heartbeat_under_another_instances_live_node_id_is_refused_and_writes_nothing(
        registry_url: str) -> None:
    reg = open_registry(registry_url)
    try:
        first = node("i-1", "10.0.0.1")
        await reg.put_sandbox(SandboxRecord("sbx-1", "node-a", "10.0.0.1", 1, time.time()), 0.6)
        await reg.refresh(first, [], 0.6)
        with pytest.raises(NodeIdInUse, match=r"node id 'node-a' is in use by another agent \(address 10\.0\.0\.1"):
            await reg.refresh(node("i-2", "10.0.0.9"), ["sbx-1"], 30)
        assert await reg.get_node("node-a") == first              # the first's record, not overwritten
        await reg.refresh(first, [], 0.6)                         # the same instance again: fine
        await asyncio.sleep(0.7)                                  # the first is gone (TTL): the id is free
        assert await reg.get_sandbox("sbx-1") is None             # and the refused refresh extended nothing
        second = node("i-2", "10.0.0.9")
        await reg.refresh(second, [], 30)
        assert await reg.get_node("node-a") == second
    finally:
        await reg.close()


async def test_a_publisher_under_a_taken_node_id_publishes_nothing(registry_url: str) -> None:
    def publisher(instance: str, address: str, sid: str) -> RegistryPublisher:
        def record(s: str, seq: int) -> SandboxRecord | None:
            return SandboxRecord(s, "node-a", address, seq, time.time()) if s == sid else None
        return RegistryPublisher(open_registry(registry_url), lambda: node(instance, address), record,
                                 lambda: [sid], ttl_s=3, heartbeat_s=0.2)

    first, second = publisher("i-1", "10.0.0.1", "sbx-first"), publisher("i-2", "10.0.0.9", "sbx-second")
    reader = open_registry(registry_url)
    try:
        async def until(check, what: str) -> None:
            deadline = time.monotonic() + 10
            while not await check():
                assert time.monotonic() < deadline, f"{what}: not within 10 s"
                await asyncio.sleep(0.02)

        first.start()
        await until(lambda: reader.get_sandbox("sbx-first"), "the first publisher's record")

        async def three_refused() -> bool:
            return second.errors >= 3
        second.start()
        await until(three_refused, "three heartbeats of the second")   # each refused
        assert await reader.get_sandbox("sbx-second") is None
        assert (await reader.get_node("node-a")).address == "10.0.0.1"
        assert not second.healthy and "in use by another agent" in second.last_error
        assert second.writes == 0 and first.healthy
    finally:
        await first.stop()
        await second.stop()
        await reader.close()


async def test_an_agent_is_refused_at_start_when_its_node_id_is_live_elsewhere(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'registry.db'}"
    reg = open_registry(url)
    await reg.refresh(node("another-host", "10.0.0.7"), [], 30)
    await reg.close()

    def reachability(state_dir: Path, registry_url: str = url) -> Reachability:
        config = Config(state_dir=state_dir, node_id="node-a", registry={"url": registry_url})
        store = StateStore(config.state_dir)
        link = AgentLink(allocations=dict, slot=None, uplink_addresses=lambda: ["10.0.0.1"], on_host=None,
                         record=None, expose=None, spawn=None, known=dict, instance=store.instance_id())
        return Reachability(config, link, Metrics())

    with pytest.raises(ConfigError, match=r"node id 'node-a' is in use by another agent \(address 10\.0\.0\.7, "
                                          r"instance another-host"):
        await reachability(tmp_path / "state").check_node_id()
    # The same agent restarted (same state directory, its own record still live) is not refused.
    # A live node record of our id that this version cannot read: refused too.
    newer_url = f"sqlite://{tmp_path / 'newer.db'}"
    reg = open_registry(newer_url)
    await reg.connect()
    await reg.close()
    write_raw_node(newer_url, "node-a", json.dumps({"v": 3, "node_id": "node-a"}), 30)
    with pytest.raises(ConfigError, match="node id 'node-a' is in use by a node record this agent cannot read"):
        await reachability(tmp_path / "state", newer_url).check_node_id()

    own_url = f"sqlite://{tmp_path / 'own.db'}"
    reg = open_registry(own_url)
    await reg.refresh(reachability(tmp_path / "mine", own_url).node_record(), [], 30)
    await reg.close()
    await reachability(tmp_path / "mine", own_url).check_node_id()


def write_raw_node(registry_url: str, node_id: str, raw: str, ttl_s: float) -> None:
    """A node record as another (newer) agent would store it, bypassing our decoder."""
    if registry_url.startswith("sqlite://"):
        with sqlite3.connect(registry_url[len("sqlite://"):]) as db:
            db.execute("INSERT OR REPLACE INTO nodes (node_id, expires_at, record) VALUES (?, ?, ?)",
                       (node_id, time.time() + ttl_s, raw))
    else:
        redis.Redis(unix_socket_path=registry_url[len("unix://"):]).set(f"netagent:node:{node_id}", raw,
                                                                        px=int(ttl_s * 1000))


async def test_a_node_record_of_an_unknown_schema_version_is_not_overwritten(registry_url: str) -> None:
    reg = open_registry(registry_url)
    try:
        await reg.connect()                              # creates the sqlite schema
        newer = json.dumps({"v": 3, "node_id": "node-a", "address": "10.0.0.7", "heartbeat_at": time.time()})
        write_raw_node(registry_url, "node-a", newer, 30)
        with pytest.raises(NodeIdInUse, match=r"node id 'node-a' is in use by a node record this agent cannot "
                                              r"read \(.*unsupported node record version 3"):
            await reg.refresh(node("i-1"), [], 30)
        with pytest.raises(RegistryError, match="unsupported node record version 3"):
            await reg.get_node("node-a")                 # still the newer agent's record
    finally:
        await reg.close()

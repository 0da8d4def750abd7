"""The same behaviour from both registry backends (sqlite file, real redis-server),
plus what only one of them has: redis outages, sqlite writer/reader sharing."""
from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis as syncredis

from netagent.registry import (
    SCHEMA_VERSION,
    NodeRecord,
    PortRecord,
    Registry,
    RegistryError,
    SandboxRecord,
    open_registry,
)
from netagent.registry.redis import RedisRegistry, split_url
from netagent.registry.sqlite import SqliteRegistry, path_from_url

LONG_TTL = 30.0
SHORT_TTL = 0.3
# A record is absent once its TTL has run (docs/registry.md): the tests allow
# this much past the TTL for the 10 ms polling, one registry call and
# scheduling on a shared 2-core host.
EXPIRY_MARGIN = 0.1


def sandbox(sandbox_id: str = "sbx-1", seq: int = 1, node_id: str = "node-a", address: str = "10.0.0.1",
            host_port: int = 30001, v: int = SCHEMA_VERSION) -> SandboxRecord:
    port = PortRecord(guest_port=8080, protocol="tcp", host_port=host_port, reachable=True,
                      changed_at=1000.0, checked_at=1001.0)
    return SandboxRecord(sandbox_id, node_id, address, seq, updated_at=1002.0, ports=(port,), v=v)


def node(node_id: str = "node-a") -> NodeRecord:
    return NodeRecord(node_id, address="10.0.0.1", heartbeat_at=time.time(), version="0.1.0", sandboxes=2,
                      extra={"zone": "z1"})


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> float:
    """Polls `check` until it is true; returns the seconds it took. Fails at the deadline."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def expiry(write: Awaitable[object], gone: Callable[[], Awaitable[bool]], ttl_s: float) -> float:
    """Runs `write` (which stores with `ttl_s`) and polls until `gone`. Asserts
    it was there for the whole TTL and gone within EXPIRY_MARGIN after it;
    returns the seconds from the write to its absence."""
    before = time.monotonic()
    await write
    after = time.monotonic()
    assert not await gone()
    while not await gone():
        assert time.monotonic() - after <= ttl_s + EXPIRY_MARGIN, f"still there {ttl_s} s + margin after its write"
        await asyncio.sleep(0.01)
    gone_at = time.monotonic()
    assert gone_at - before >= ttl_s - 0.005, f"gone {gone_at - before:.3f} s after a write with a {ttl_s} s TTL"
    return gone_at - before


@pytest.fixture(params=["sqlite", "redis"])
async def registry(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        reg: Registry = SqliteRegistry(f"sqlite://{tmp_path / 'registry.db'}")
    else:
        reg = RedisRegistry(request.getfixturevalue("redis_server").url)
    try:
        await reg.connect()
        for node_id in ("node-a", "node-b", "node-w"):     # alive for the whole test: their v2 records are served
            await reg.refresh(node(node_id), [], LONG_TTL)
        yield reg
    finally:
        await reg.close()


async def test_put_get_roundtrip(registry: Registry) -> None:
    record = sandbox()
    assert await registry.put_sandbox(record, LONG_TTL) is True
    assert await registry.get_sandbox("sbx-1") == record
    assert await registry.get_sandbox("nope") is None


async def test_stale_seq_is_refused_and_changes_nothing(registry: Registry) -> None:
    newer = sandbox(seq=5, host_port=30005)
    assert await registry.put_sandbox(newer, LONG_TTL)
    assert await registry.put_sandbox(sandbox(seq=4, host_port=30004), LONG_TTL) is False
    assert await registry.put_sandbox(sandbox(seq=5, host_port=30055), LONG_TTL) is False  # equal is stale too
    assert await registry.get_sandbox("sbx-1") == newer
    assert await registry.put_sandbox(sandbox(seq=6, host_port=30006), LONG_TTL) is True
    assert (await registry.get_sandbox("sbx-1")).seq == 6


async def test_put_many_applies_the_seq_rule_to_each_record(registry: Registry) -> None:
    assert await registry.put_sandbox(sandbox("sbx-2", seq=10), 30)
    stored = await registry.put_many([sandbox("sbx-1", seq=5), sandbox("sbx-2", seq=9), sandbox("sbx-3", seq=1)], 30)
    assert stored == [True, False, True]
    assert (await registry.get_sandbox("sbx-2")).seq == 10
    assert {r.seq for r in [await registry.get_sandbox("sbx-1"), await registry.get_sandbox("sbx-3")]} == {5, 1}


# One writer process: its own registry object and connection (all of the same node,
# so only the seq decides; moves between nodes: test_moves.py). Once told to go,
# it writes the same sandbox for `seconds`, each write with seq = microseconds
# since `base` * writers + index: the writers' seqs interleave in time, so they
# collide all along. Prints what it attempted and which seqs got stored.
WRITER = r"""
import asyncio, json, sys, time
from netagent.registry import PortRecord, SandboxRecord, open_registry
url, (index, writers, base), seconds = sys.argv[1], map(int, sys.argv[2:5]), float(sys.argv[5])
async def main():
    reg = open_registry(url)
    await reg.connect()
    print("ready", flush=True)
    sys.stdin.readline()
    stored, seq, attempts, end = [], index, 0, time.monotonic() + seconds
    while time.monotonic() < end:
        seq = max(seq + writers, (time.time_ns() - base) // 1000 * writers + index)
        port = PortRecord(8080, "tcp", 20000 + seq % 40000, True, 1000.0, 1001.0)
        attempts += 1
        if await reg.put_sandbox(SandboxRecord("sbx-1", "node-w", "10.0.0.1", seq, time.time(), (port,)), 30):
            stored.append(seq)
    await reg.close()
    print(json.dumps({"attempts": attempts, "last": seq, "stored": stored}))
asyncio.run(main())
"""


async def test_concurrent_writers_in_separate_processes_keep_the_highest_seq(registry: Registry) -> None:
    writers, seconds = 4, 1.0
    args = [registry.url, str(writers), str(time.time_ns()), str(seconds)]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, args[0], str(i), *args[1:]], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(writers)]
    seen: list[int] = []   # what a reader sees meanwhile: the stored seq never goes back
    try:
        for p in procs:    # all connected, then all go
            assert await asyncio.to_thread(p.stdout.readline) == "ready\n", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        while any(p.poll() is None for p in procs):
            if (rec := await registry.get_sandbox("sbx-1")) is not None:
                seen.append(rec.seq)
            await asyncio.sleep(0.001)
        outputs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    top = max(r["last"] for r in results)   # the highest seq anyone wrote
    final = await registry.get_sandbox("sbx-1")
    assert final is not None and final.seq == top, (final, top)
    assert final.ports[0].host_port == 20000 + top % 40000
    assert len(seen) > 10 and seen == sorted(seen), seen
    # The writers really wrote at the same time: in the order of the stored
    # seqs, the lead passed from one writer to another many times.
    order = sorted(seq for r in results for seq in r["stored"])
    lead_changes = sum(a % writers != b % writers for a, b in itertools.pairwise(order))
    assert lead_changes >= 10, [(r["attempts"], len(r["stored"])) for r in results]


async def test_tombstone_hides_record_and_blocks_older_writes(registry: Registry) -> None:
    assert await registry.put_sandbox(sandbox(seq=3), LONG_TTL)
    assert await registry.put_sandbox(SandboxRecord.tombstone("sbx-1", "node-a", 4, time.time()), LONG_TTL)
    assert await registry.get_sandbox("sbx-1") is None
    assert await registry.node_sandboxes("node-a") == []
    # A late write from before the release must not resurrect the sandbox.
    assert await registry.put_sandbox(sandbox(seq=3), LONG_TTL) is False
    assert await registry.put_sandbox(sandbox(seq=4), LONG_TTL) is False
    assert await registry.get_sandbox("sbx-1") is None
    # A newer allocation of the same id is stored.
    assert await registry.put_sandbox(sandbox(seq=5, node_id="node-b"), LONG_TTL) is True
    assert (await registry.get_sandbox("sbx-1")).node_id == "node-b"
    assert await registry.node_sandboxes("node-b") == ["sbx-1"]


async def test_stale_tombstone_is_refused(registry: Registry) -> None:
    assert await registry.put_sandbox(sandbox(seq=7), LONG_TTL)
    assert await registry.put_sandbox(SandboxRecord.tombstone("sbx-1", "node-a", 6, time.time()), LONG_TTL) is False
    assert (await registry.get_sandbox("sbx-1")).seq == 7


async def test_a_v1_record_expires_after_ttl(registry: Registry) -> None:
    async def gone() -> bool:
        return await registry.get_sandbox("sbx-1") is None

    await expiry(registry.put_sandbox(sandbox(seq=9, v=1), SHORT_TTL), gone, SHORT_TTL)
    assert await registry.node_sandboxes("node-a") == []
    # An expired record is absent: it no longer blocks a lower seq.
    assert await registry.put_sandbox(sandbox(seq=1), LONG_TTL) is True


async def test_refresh_extends_only_the_nodes_own_live_v1_records(registry: Registry) -> None:
    await registry.put_sandbox(sandbox("own", node_id="node-a", v=1), SHORT_TTL)
    await registry.put_sandbox(sandbox("other", node_id="node-b", v=1), SHORT_TTL)
    await registry.put_sandbox(sandbox("moved", seq=1, node_id="node-a", v=1), SHORT_TTL)
    await registry.write_sandbox(sandbox("moved", seq=2, node_id="node-b", v=1), SHORT_TTL, claim=True)
    await registry.put_sandbox(sandbox("released", seq=1, node_id="node-a", v=1), LONG_TTL)
    await registry.put_sandbox(SandboxRecord.tombstone("released", "node-a", 2, time.time()), SHORT_TTL)
    tombstone_expires = time.monotonic() + SHORT_TTL   # at the latest (it was written before this line)

    await registry.refresh(node("node-a"), ["own", "other", "moved", "released", "never-written"], LONG_TTL)

    async def others_gone() -> bool:
        return await registry.get_sandbox("other") is None and await registry.get_sandbox("moved") is None

    # Not extended: gone when the TTL of their own writes (just before the refresh) runs out.
    assert not await others_gone()
    await wait_until(others_gone, timeout_s=SHORT_TTL + EXPIRY_MARGIN)
    assert await registry.get_sandbox("own") is not None
    assert await registry.get_sandbox("never-written") is None
    # The tombstone was not extended either: once it expired, an old seq is accepted again.
    # (It was written last, so it may outlive the others by however long the writes took.)
    await asyncio.sleep(max(0.0, tombstone_expires - time.monotonic()))
    assert await registry.put_sandbox(sandbox("released", seq=1, node_id="node-a"), LONG_TTL) is True
    assert await registry.node_sandboxes("node-a") == ["own", "released"]


async def test_node_record_and_its_expiry(registry: Registry) -> None:
    me = node("node-c")
    assert await registry.get_node("node-c") is None

    async def gone() -> bool:
        return await registry.get_node("node-c") is None

    async def refresh_and_read() -> None:
        assert await registry.refresh(me, [], SHORT_TTL) is True       # it was missing
        assert await registry.get_node("node-c") == me

    await expiry(refresh_and_read(), gone, SHORT_TTL)
    assert await registry.refresh(me, [], LONG_TTL) is True            # expired: missing again
    assert await registry.get_node("node-c") == me
    assert await registry.refresh(me, [], LONG_TTL) is False           # live: nothing to rewrite


async def test_a_v2_record_is_served_exactly_while_its_node_lives(registry: Registry) -> None:
    """The record itself never expires: its node's heartbeat decides (a killed host's
    sandboxes are gone one TTL after its last heartbeat, and back if it returns)."""
    record = sandbox("sbx-2", node_id="node-c")
    assert await registry.put_sandbox(record, SHORT_TTL) is True
    assert await registry.get_sandbox("sbx-2") is None                 # its node has no record yet

    async def gone() -> bool:
        return await registry.get_sandbox("sbx-2") is None

    async def heartbeat_and_read() -> None:
        await registry.refresh(node("node-c"), [], SHORT_TTL)
        assert await registry.get_sandbox("sbx-2") == record

    await expiry(heartbeat_and_read(), gone, SHORT_TTL)
    assert await registry.node_sandboxes("node-c") == ["sbx-2"]        # kept, for the node's return
    await registry.refresh(node("node-c"), [], LONG_TTL)
    assert await registry.get_sandbox("sbx-2") == record               # long after the record's "TTL"


async def test_node_sandboxes_lists_live_owned_ids(registry: Registry) -> None:
    for sid in ("a1", "a2", "a3", "a4"):
        await registry.put_sandbox(sandbox(sid, node_id="node-a"), LONG_TTL)
    await registry.put_sandbox(sandbox("b1", node_id="node-b"), LONG_TTL)
    await registry.put_sandbox(SandboxRecord.tombstone("a3", "node-a", 2, time.time()), LONG_TTL)
    await registry.write_sandbox(sandbox("a4", seq=2, node_id="node-b"), LONG_TTL, claim=True)  # moved to node-b
    assert await registry.node_sandboxes("node-a") == ["a1", "a2"]
    assert await registry.node_sandboxes("node-b") == ["a4", "b1"]
    assert await registry.node_sandboxes("node-c") == []


async def test_server_time_is_close_to_local_clock(registry: Registry) -> None:
    assert abs(await registry.server_time() - time.time()) < 1.0


# -- redis only --

async def test_redis_key_layout_is_what_edges_read(redis_server) -> None:
    reg = RedisRegistry(redis_server.url)
    raw = syncredis.Redis(unix_socket_path=str(redis_server.socket_path), decode_responses=True)
    try:
        record = sandbox("sbx-9")
        await reg.put_sandbox(record, LONG_TTL)
        await reg.refresh(node("node-a"), ["sbx-9"], LONG_TTL)
        assert SandboxRecord.from_json(raw.get("netagent:sbx:sbx-9")) == record
        assert NodeRecord.from_json(raw.get("netagent:node:node-a")).node_id == "node-a"
        assert raw.smembers("netagent:node:node-a:sbx") == {"sbx-9"}
        for key in ("netagent:sbx:sbx-9", "netagent:node:node-a", "netagent:node:node-a:sbx"):
            assert 0 < raw.pttl(key) <= LONG_TTL * 1000
    finally:
        raw.close()
        await reg.close()


async def test_redis_prefix_from_url(redis_server) -> None:
    reg = open_registry(f"{redis_server.url}?prefix=t1:")
    raw = syncredis.Redis(unix_socket_path=str(redis_server.socket_path), decode_responses=True)
    try:
        assert isinstance(reg, RedisRegistry)
        assert await reg.refresh(node(), [], LONG_TTL) is True           # the node record was missing
        await reg.put_sandbox(sandbox("x"), LONG_TTL)
        assert raw.exists("t1:sbx:x") == 1 and raw.exists("netagent:sbx:x") == 0
        assert await reg.get_sandbox("x") is not None
    finally:
        raw.close()
        await reg.close()


def test_redis_url_password_is_not_logged() -> None:
    redis_url, prefix, safe = split_url("redis://user:s3cret@h:6380/2?prefix=p:")
    assert (redis_url, prefix, safe) == ("redis://user:s3cret@h:6380/2", "p:", "redis://user:***@h:6380/2")


async def test_redis_outage_raises_quickly_and_the_same_object_recovers(redis_server) -> None:
    reg = RedisRegistry(redis_server.url)
    try:
        await reg.connect()
        assert await reg.put_sandbox(sandbox(seq=1), LONG_TTL)
        redis_server.kill()

        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: reg.put_sandbox(sandbox(seq=2), LONG_TTL),
            lambda: reg.refresh(node(), ["sbx-1"], LONG_TTL),
            lambda: reg.get_sandbox("sbx-1"),
            lambda: reg.get_node("node-a"),
            lambda: reg.node_sandboxes("node-a"),
            lambda: reg.server_time(),
            lambda: reg.connect(),
        ]
        for call in calls:
            start = time.monotonic()
            with pytest.raises(RegistryError) as excinfo:
                await call()
            assert time.monotonic() - start < 2.0
            assert redis_server.url in str(excinfo.value)

        redis_server.start()  # same socket, empty data set (no persistence)
        assert await reg.get_sandbox("sbx-1") is None
        assert await reg.put_sandbox(sandbox(seq=2), LONG_TTL) is True  # scripts are reloaded
        await reg.refresh(node(), ["sbx-1"], LONG_TTL)
        assert (await reg.get_sandbox("sbx-1")).seq == 2
        assert await reg.node_sandboxes("node-a") == ["sbx-1"]
    finally:
        await reg.close()


async def test_redis_down_at_connect_then_up(redis_server) -> None:
    redis_server.kill()
    reg = RedisRegistry(redis_server.url)
    try:
        with pytest.raises(RegistryError):
            await reg.connect()
        redis_server.start()
        await reg.connect()
        assert await reg.put_sandbox(sandbox(), LONG_TTL)
    finally:
        await reg.close()


# -- sqlite only --

async def test_sqlite_writer_and_reader_share_the_file(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'sub' / 'registry.db'}"
    writer, reader = SqliteRegistry(url), open_registry(url)
    try:
        assert isinstance(reader, SqliteRegistry)
        await writer.put_sandbox(sandbox(seq=1), LONG_TTL)
        await writer.refresh(node(), ["sbx-1"], LONG_TTL)
        assert (await reader.get_sandbox("sbx-1")).seq == 1
        assert (await reader.get_node("node-a")).node_id == "node-a"
        assert await reader.put_sandbox(sandbox(seq=2), LONG_TTL)
        assert (await writer.get_sandbox("sbx-1")).seq == 2
        await writer.put_sandbox(SandboxRecord.tombstone("sbx-1", "node-a", 3, time.time()), LONG_TTL)
        assert await reader.get_sandbox("sbx-1") is None
        with sqlite3.connect(path_from_url(url)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await writer.close()
        await reader.close()


def test_sqlite_url_needs_an_absolute_path() -> None:
    assert path_from_url("sqlite:///var/lib/x.db") == "/var/lib/x.db"
    with pytest.raises(ValueError):
        SqliteRegistry("sqlite://relative.db")


async def test_sqlite_unusable_file_is_a_registry_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    reg = SqliteRegistry(f"sqlite://{tmp_path / 'dir.db'}")
    try:
        with pytest.raises(RegistryError):
            await reg.get_sandbox("x")
    finally:
        await reg.close()

"""What only Redis Cluster has: the URL, one slot per sandbox script, a half-up
cluster refused, the sharded change feed, and a master killed under publishers.
(The common backend behaviour runs on the cluster in test_backends.py.)"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from redis.crc import key_slot

from netagent.edge.feeds import FeedLost, RedisFeed
from netagent.registry import NodeRecord, PortRecord, RegistryError, SandboxRecord, open_registry
from netagent.registry.publisher import RegistryPublisher
from netagent.registry.redis import BUCKETS, RedisRegistry, bucket_of
from netagent.registry.rediscluster import parse_cluster_url
from tests.testbed.redis_cluster import RedisCluster


def record(sid: str, node_id: str, seq: int, host_port: int = 30001) -> SandboxRecord:
    port = PortRecord(8080, "tcp", host_port, True, 1000.0, 1001.0)
    return SandboxRecord(sid, node_id, "10.0.0.1", seq, time.time(), (port,))


def test_cluster_url_names_the_nodes_and_hides_the_password() -> None:
    target, prefix, safe = parse_cluster_url("redis+cluster://u:s3cret@10.0.0.1:7000,[::1]:7001/?prefix=p:",
                                             "netagent:")
    assert target.nodes == (("10.0.0.1", 7000), ("::1", 7001))
    assert (target.username, target.password, target.tls, prefix) == ("u", "s3cret", False, "p:")
    assert "s3cret" not in safe and safe == "redis+cluster://u:***@10.0.0.1:7000,[::1]:7001"
    assert parse_cluster_url("rediss+cluster://h:1", "netagent:")[0].tls is True
    for bad in ("redis+cluster://h", "redis+cluster://h:1/0", "redis+cluster://h:99999",
                "redis+cluster://h:1?db=2", "redis+cluster://:1"):
        with pytest.raises(ValueError):
            open_registry(bad)
    with pytest.raises(ValueError, match="braces"):
        open_registry("redis+cluster://h:1?prefix={x}")


def test_each_sandbox_script_touches_one_slot() -> None:
    """The seq CAS touches the record, its bucket's node set and its bucket's change
    channel: one slot, for every id; and the buckets spread over the slot space."""
    reg = RedisRegistry("redis+cluster://127.0.0.1:1")
    for i in range(2000):
        sid = f"sbx-{i}"
        bucket = bucket_of(sid)
        slots = {key_slot(k.encode()) for k in (reg.sandbox_key(sid), reg.node_set_key(f"node-{i % 7}", bucket),
                                                 reg.change_channel(bucket))}
        assert len(slots) == 1, (sid, slots)
    assert len({bucket_of(f"sbx-{i}") for i in range(2000)}) == BUCKETS
    assert len(set(reg.change_channels)) == BUCKETS
    # On a standalone Redis there is one channel, as before.
    assert RedisRegistry("redis://127.0.0.1:1/0").change_channels == ["netagent:changes"]


async def test_half_up_cluster_is_refused_and_nothing_is_published(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path, masters=3, replicas=0)
    try:
        cluster.create()
        dead = cluster.masters()[0]
        dead.kill()              # its slots have no replica: the others go cluster_state:fail
        deadline = time.monotonic() + 15
        while any(cluster.state_of(n) == "ok" for n in cluster.nodes if n.alive):
            assert time.monotonic() < deadline, cluster.describe()
            await asyncio.sleep(0.1)

        reg = open_registry(cluster.url)
        with pytest.raises(RegistryError, match="cluster_state:fail") as excinfo:
            await reg.connect()
        assert cluster.url in str(excinfo.value)
        await reg.close()

        live = {"sbx-1", "sbx-2"}
        pub = RegistryPublisher(open_registry(cluster.url), lambda: NodeRecord("node-a", "10.0.0.1", time.time()),
                                lambda sid, seq: record(sid, "node-a", seq) if sid in live else None,
                                lambda: sorted(live), ttl_s=5, heartbeat_s=1, retry_s=0.1)
        pub.start()
        try:
            await asyncio.sleep(1.0)
            assert not pub.healthy and "cluster_state:fail" in pub.last_error
            assert pub.writes == 0
        finally:
            await pub.stop()
        assert cluster.keys() == []
    finally:
        cluster.stop()


async def test_sharded_feed_delivers_changes_from_every_master(redis_cluster) -> None:
    writer, reader = RedisRegistry(redis_cluster.url), RedisRegistry(redis_cluster.url)
    feed = RedisFeed(reader)
    try:
        await writer.refresh(NodeRecord("node-a", "10.0.0.1", time.time()), [], 30)   # v2 records live with it
        await writer.put_sandbox(record("before", "node-a", 1), 30)
        assert [c.sandbox_id for c in await feed.snapshot()] == ["before"]
        ids = [f"sbx-{i}" for i in range(200)]          # every bucket, so every master
        assert len({bucket_of(s) for s in ids}) == BUCKETS
        assert all(await writer.put_many([record(s, "node-a", 2) for s in ids], 30))
        await writer.put_sandbox(SandboxRecord.tombstone("before", "node-a", 3, time.time()), 30)
        seen: dict[str, bool] = {}
        deadline = time.monotonic() + 5
        while len(seen) < len(ids) + 1:
            assert time.monotonic() < deadline, f"{len(seen)} of {len(ids) + 1} changes seen"
            for change in await feed.changes():
                seen[change.sandbox_id] = bool(change.entries)
        assert seen == {**{s: True for s in ids}, "before": False}
    finally:
        await feed.close()
        await writer.close()
        await reader.close()


@pytest.mark.slow
async def test_master_killed_under_publishers_fails_over_and_no_record_goes_missing(own_redis_cluster) -> None:
    """Two hosts publish 300 sandboxes each; the master serving host A's first sandbox is
    killed with SIGKILL. Its replica takes over, the publishers push again, an edge feed
    sees its subscription drop and re-snapshots, and once the cluster settles every record
    is there with its owner. Prints the time an edge-like full read had no correct answer."""
    cluster = own_redis_cluster
    hosts = {"node-a": {f"a-{i}" for i in range(300)}, "node-b": {f"b-{i}" for i in range(300)}}
    pubs = []
    for node_id, live in hosts.items():
        def make(sid: str, seq: int, node_id: str = node_id, live: set[str] = live) -> SandboxRecord | None:
            return record(sid, node_id, seq) if sid in live else None
        pub = RegistryPublisher(open_registry(cluster.url),
                                lambda node_id=node_id: NodeRecord(node_id, "10.0.0.1", time.time()),
                                make, lambda live=live: sorted(live), ttl_s=10, heartbeat_s=3, retry_s=0.2)
        pubs.append(pub)
        pub.start()
    reader = RedisRegistry(cluster.url)
    feed = RedisFeed(RedisRegistry(cluster.url))
    expected = {sid: node_id for node_id, live in hosts.items() for sid in live}

    async def correct() -> bool:
        try:
            rows = await reader.raw_records()
        except RegistryError:
            return False
        got = {sid: SandboxRecord.from_json(raw) for sid, raw, _ in rows}
        return all(sid in got and got[sid].node_id == node and not got[sid].deleted
                   for sid, node in expected.items())

    try:
        deadline = time.monotonic() + 15
        while not await correct():
            assert time.monotonic() < deadline, "publishers never wrote every record"
            await asyncio.sleep(0.05)
        await feed.snapshot()
        victim = cluster.master_of(reader.sandbox_key("a-0"))
        killed_wall = time.time()
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        victim.proc.wait()
        victim.proc = None

        # An edge-like reader polls every 50 ms: the longest run without a correct answer.
        wrong_since: float | None = None
        outage = 0.0
        feed_lost = False
        settled_at: float | None = None
        while settled_at is None or time.monotonic() - settled_at < 3.0:
            assert time.monotonic() - killed_at < 60, f"not settled: {cluster.describe()}"
            ok = await correct()
            now = time.monotonic()
            if not ok and wrong_since is None:
                wrong_since = now
            if ok and wrong_since is not None:
                outage = max(outage, now - wrong_since)
                wrong_since = None
            if settled_at is None and ok and cluster.settled() and all(p.healthy for p in pubs):
                settled_at = now
            elif settled_at is not None:
                assert ok, "a record went missing after the cluster settled"
            if not feed_lost:
                try:
                    await feed.changes()
                except FeedLost:
                    feed_lost = True
            await asyncio.sleep(0.05)
        assert cluster.master_of(reader.sandbox_key("a-0")) is not victim
        assert wrong_since is None
        assert feed_lost, "the edge feed never noticed its master died"
        # The agents keep publishing: a new sandbox on host A appears, through the re-made feed.
        assert len(await feed.snapshot()) == len(expected)
        hosts["node-a"].add("a-new")
        pubs[0].mark("a-new")
        deadline = time.monotonic() + 5
        while "a-new" not in {c.sandbox_id for c in await feed.changes()}:
            assert time.monotonic() < deadline, "a change after the failover never reached the feed"
        # ... and both hosts heartbeat on (records are written on change; the node record is the heartbeat)
        for node_id in hosts:
            assert (await reader.get_node(node_id)).heartbeat_at > killed_wall, node_id
        print(f"\nfailover: {outage:.2f} s without a correct full read; settled "
              f"{settled_at - killed_at:.2f} s after the kill")
    finally:
        await feed.close()
        await reader.close()
        for pub in pubs:
            await pub.stop()

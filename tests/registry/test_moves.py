"""A sandbox moving between hosts (docs/registry.md, "Moves between hosts"): two
real publishers, host A and host B, on one registry (a SQLite file, a real
redis-server), with B's clock 5 s behind or ahead of A's. The sandbox is
allocated on A, then on B while A still has it (a resume from a snapshot), then
released on A. Both hosts keep writing it (probe updates, heartbeats) the whole
time. The registry and the edge's change feed must name B from B's first
stored write on, and A's release must leave B's record alone."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netagent.edge.feeds import open_feed
from netagent.registry import NodeRecord, PortRecord, Registry, SandboxRecord, open_registry
from netagent.registry.ownership import Stored, Verdict, decide
from netagent.registry.publisher import RegistryPublisher

SID = "sbx-m"
TTL_S = 3.0
HEARTBEAT_S = 0.3
CHURN_S = 0.02          # how often each host rewrites the record (probe updates)
WATCH_S = 1.5           # how long each phase is read


# (stored: node, seq, tombstone; or None) + (write: node, seq, claim) -> verdict
RULE_CASES = [
    (None, ("node-b", 1, False), Verdict.STORED),                     # nothing there
    (("node-a", 10, False), ("node-a", 11, False), Verdict.STORED),   # the owner, newer
    (("node-a", 10, False), ("node-a", 10, False), Verdict.STALE),    # the owner, equal seq
    (("node-a", 10, False), ("node-a", 9, True), Verdict.STALE),      # a claim does not beat the owner's own seq
    (("node-a", 10, True), ("node-a", 9, False), Verdict.STALE),      # a late write behind our own tombstone
    (("node-a", 10, False), ("node-b", 99, False), Verdict.NOT_OWNER),  # another node, even with a higher seq
    (("node-a", 10, False), ("node-b", 5, True), Verdict.STORED),     # a claim, even with a lower seq (clock behind)
    (("node-a", 10, True), ("node-b", 5, False), Verdict.STORED),     # over another node's tombstone
    (("node-b", 5, False), ("node-a", 99, True), Verdict.STORED),     # a move back is a claim too
]


@pytest.mark.parametrize("stored, write, verdict", RULE_CASES)
def test_the_owner_check_plus_seq_rule(stored, write, verdict) -> None:
    assert decide(Stored(*stored) if stored else None, *write) == verdict


async def test_both_backends_apply_the_same_rule(registry_url: str) -> None:
    reg = open_registry(registry_url)
    try:
        for node_id in ("node-a", "node-b"):
            await reg.refresh(NodeRecord(node_id, "10.0.0.1", time.time()), [], 30)
        for i, (stored, (node_id, seq, claim), verdict) in enumerate(RULE_CASES):
            sid = f"case-{i}"
            if stored:
                first = SandboxRecord(sid, stored[0], "10.0.0.1", stored[1], time.time())
                if stored[2]:
                    first = SandboxRecord.tombstone(sid, stored[0], stored[1], time.time())
                assert await reg.write_sandbox(first, 30, claim=True) == Verdict.STORED
            write = SandboxRecord(sid, node_id, "10.0.0.2", seq, time.time())
            assert await reg.write_sandbox(write, 30, claim=claim) == verdict, (i, stored, node_id, seq, claim)
            rec = await reg.get_sandbox(sid)
            if verdict == Verdict.STORED:
                assert rec == write
            else:                                   # a refused write changes nothing
                assert (rec is None) if stored[2] else (rec is not None and (rec.node_id, rec.seq) == stored[:2])
    finally:
        await reg.close()


class Host:
    """One host's publisher with synthetic sandboxes and a clock `skew_s` off the machine's."""

    def __init__(self, url: str, node_id: str, address: str, host_port: int, skew_s: float) -> None:
        self.node_id, self.address, self.host_port = node_id, address, host_port
        self.clock: Callable[[], float] = lambda: time.time() + skew_s
        self.live: set[str] = set()
        self.publisher = RegistryPublisher(open_registry(url), self.node, self.record, lambda: sorted(self.live),
                                           ttl_s=TTL_S, heartbeat_s=HEARTBEAT_S, clock=self.clock)
        self._churn: asyncio.Task[None] | None = None

    def node(self) -> NodeRecord:
        return NodeRecord(self.node_id, self.address, self.clock(), sandboxes=len(self.live))

    def record(self, sid: str, seq: int) -> SandboxRecord | None:
        if sid not in self.live:
            return None
        now = self.clock()
        port = PortRecord(8080, "tcp", self.host_port, True, now, now)
        return SandboxRecord(sid, self.node_id, self.address, seq, now, (port,))

    def allocate(self, sid: str) -> None:
        self.live.add(sid)
        self.publisher.claim(sid)

    def release(self, sid: str) -> None:
        self.live.discard(sid)
        self.publisher.mark(sid)

    async def _rewrite_forever(self) -> None:
        while True:
            for sid in self.live:
                self.publisher.mark(sid)
            await asyncio.sleep(CHURN_S)

    def start(self) -> None:
        self.publisher.start()
        self._churn = asyncio.create_task(self._rewrite_forever())

    async def stop(self) -> None:
        if self._churn:
            self._churn.cancel()
            await asyncio.gather(self._churn, return_exceptions=True)
        await self.publisher.stop()


@pytest.fixture(params=["sqlite", "redis"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'registry.db'}"
    return request.getfixturevalue("redis_server").url


async def owner_when_stored(reader: Registry, timeout_s: float, node_id: str) -> None:
    deadline = time.monotonic() + timeout_s
    while (rec := await reader.get_sandbox(SID)) is None or rec.node_id != node_id:
        assert time.monotonic() < deadline, f"{SID} not published by {node_id} within {timeout_s} s (holds {rec})"
        await asyncio.sleep(0.01)


async def read_for(reader: Registry, seconds: float) -> list[str]:
    """The owner seen by each read ('' for absent or a tombstone), every 20 ms."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rec = await reader.get_sandbox(SID)
        seen.append(rec.node_id if rec else "")
        await asyncio.sleep(0.02)
    return seen


class EdgeWatch:
    """The edge's view: the change feed the control plane follows, applied to a dict."""

    def __init__(self, url: str) -> None:
        self.registry = open_registry(url)
        self.feed = open_feed(self.registry)  # type: ignore[arg-type]
        self.values: dict[str, dict[str, str]] = {}
        self.history: list[dict[str, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for change in await self.feed.snapshot():
            self.values[change.sandbox_id] = change.entries
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            for change in await self.feed.changes():
                self.values[change.sandbox_id] = change.entries
                if change.sandbox_id == SID:
                    self.history.append(change.entries)

    def port_value(self) -> str:
        return self.values.get(SID, {}).get(f"{SID}/8080", "")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.feed.close()
        await self.registry.close()


@pytest.mark.parametrize("b_skew_s", [0.0, -5.0, 5.0], ids=["same-clock", "b-clock-5s-behind", "b-clock-5s-ahead"])
async def test_a_moved_sandbox_follows_b_from_its_first_write_and_a_release_leaves_b_alone(
        registry_url: str, b_skew_s: float) -> None:
    a = Host(registry_url, "node-a", "10.0.0.1", 30001, 0.0)
    b = Host(registry_url, "node-b", "10.0.0.2", 30002, b_skew_s)
    reader = open_registry(registry_url)
    edge = EdgeWatch(registry_url)
    await edge.start()
    try:
        a.start()
        b.start()
        a.allocate(SID)
        await owner_when_stored(reader, 3, "node-a")

        b.allocate(SID)                           # resumed on B while A still has it
        await owner_when_stored(reader, 3, "node-b")
        edge_from = len(edge.history)
        both_hold = await read_for(reader, WATCH_S)
        assert both_hold.count("node-b") == len(both_hold), (
            f"while both hosts hold it, {len(both_hold) - both_hold.count('node-b')} of {len(both_hold)} "
            f"reads did not name node-b: {both_hold}")

        assert a.publisher.moved_away == {SID}    # A noticed and stopped writing it
        a.release(SID)                            # A's release, then A's heartbeats go on
        after_release = await read_for(reader, WATCH_S + HEARTBEAT_S)
        assert after_release.count("node-b") == len(after_release), (
            f"after A's release, {len(after_release) - after_release.count('node-b')} of {len(after_release)} "
            f"reads did not name node-b: {after_release}")

        assert not a.publisher.moved_away         # released on A too: forgotten
        await asyncio.sleep(0.1)                  # the feed's last messages
        b_value = "10.0.0.2|30002||"
        assert edge.port_value() == b_value
        wrong = [h for h in edge.history[edge_from:] if h.get(f"{SID}/8080") != b_value]
        assert not wrong, f"the edge saw {len(wrong)} changes not routing to B after B's first write: {wrong[:3]}"
    finally:
        await a.stop()
        await b.stop()
        await edge.stop()
        await reader.close()


async def test_a_claim_held_back_past_its_window_is_published_after_the_old_hosts_release(
        registry_url: str) -> None:
    a = Host(registry_url, "node-a", "10.0.0.1", 30001, 0.0)
    b = Host(registry_url, "node-b", "10.0.0.2", 30002, 0.0)
    reader = open_registry(registry_url)
    try:
        a.start()
        b.start()
        a.allocate(SID)
        await owner_when_stored(reader, 3, "node-a")
        b.live.add(SID)                 # on B, but its claim window is over (say, a long registry outage)
        b.publisher.mark(SID)
        assert set(await read_for(reader, 3 * HEARTBEAT_S)) == {"node-a"}   # not a claim: A keeps it
        assert b.publisher.moved_away == {SID}
        a.release(SID)
        await owner_when_stored(reader, 2 * HEARTBEAT_S + 0.5, "node-b")     # B's next heartbeat
        assert not b.publisher.moved_away
    finally:
        await a.stop()
        await b.stop()
        await reader.close()

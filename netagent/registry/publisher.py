"""The agent's side of the registry: pushes sandbox records as they change,
heartbeats, and survives registry outages.

Changes mark a sandbox dirty; the publisher writes dirty records within a few
milliseconds. Every `heartbeat_s` it rewrites the node record only: sandbox
records live while it does, so the load grows with change, not with time. If
the heartbeat finds the node record missing (an emptied registry, or the node
was taken for dead), and at start and after an outage, it writes every record
again and tombstones records of this node that no longer exist here. During an
outage it keeps the dirty set and retries every `retry_s`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..workers import cancel_task, wait_event
from .base import Registry, RegistryError, UnreadableRecord
from .ownership import Verdict
from .records import NodeRecord, SandboxRecord

log = logging.getLogger("netagent.registry")
BATCH = 256   # records per put_many during a full push


class SequenceClock:
    """Per-write sequence numbers: microseconds since the epoch, strictly
    increasing within this process, so a restarted agent (or the next node
    to host a sandbox id) writes with higher numbers than before."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, int(self.clock() * 1_000_000))
        return self._last


class RegistryPublisher:
    def __init__(self, registry: Registry, node: Callable[[], NodeRecord],
                 record: Callable[[str, int], SandboxRecord | None], sandbox_ids: Callable[[], list[str]],
                 ttl_s: float, heartbeat_s: float, retry_s: float = 0.5,
                 clock: Callable[[], float] = time.time):
        self.registry = registry
        self.node = node               # the node record to heartbeat
        self.record = record           # (sandbox id, seq) -> live record, or None if not here
        self.sandbox_ids = sandbox_ids
        self.ttl_s = ttl_s
        self.heartbeat_s = heartbeat_s
        self.retry_s = retry_s
        self.clock = clock             # wall clock for seqs and tombstones (tests skew it)
        self.seq = SequenceClock(clock)
        self.healthy = False
        self.last_error = ""
        self.last_success = 0.0
        self.writes = 0
        self.full_pushes = 0        # times every record was written (start, outage, node record missing)
        self.errors = 0
        self.refused = 0            # writes the registry refused (older than it holds, or not the owner)
        self._refused_ids: set[str] = set()
        self._claims: dict[str, float] = {}   # sandbox id -> monotonic end of its claim window
        self.moved_away: set[str] = set()     # still here, but another node claimed them since
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._need_full = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="netagent-registry")

    async def stop(self) -> None:
        await cancel_task(self._task)
        await self.registry.close()

    def push_all_now(self) -> None:
        self._need_full = True
        self._wake.set()

    def mark(self, sandbox_id: str) -> None:
        self._dirty.add(sandbox_id)
        self._wake.set()

    def claim(self, sandbox_id: str, window_s: float | None = None) -> None:
        """The sandbox was just allocated here (maybe moved from another node): its
        writes for the next `window_s` (default: the TTL) are claims, which take the
        record over from another owner (docs/registry.md, "Moves between hosts"). The
        window is bounded so a claim held back by an outage cannot take back a
        sandbox moved on since."""
        self._claims[sandbox_id] = time.monotonic() + (self.ttl_s if window_s is None else window_s)
        self.moved_away.discard(sandbox_id)
        self.mark(sandbox_id)

    async def _run(self) -> None:
        next_heartbeat = 0.0
        while True:
            try:
                if not self.healthy or self._need_full:
                    await self.registry.connect()
                if self._need_full or time.monotonic() >= next_heartbeat:
                    node = self.node()
                    if await self.registry.refresh(node, [], self.ttl_s) or self._need_full:
                        await self._push_all(node)
                        self._need_full = False
                    await self._retake_moved_away(node.node_id)
                    next_heartbeat = time.monotonic() + self.heartbeat_s
                await self._flush_dirty()
                self._mark_healthy()
                delay = max(0.0, next_heartbeat - time.monotonic())
            except RegistryError as exc:
                self._mark_unhealthy(str(exc))
                delay = self.retry_s
            self._wake.clear()
            if not self.healthy:
                await asyncio.sleep(delay)  # an outage: retry on a fixed beat, not per change
                continue
            if self._dirty:
                continue
            await wait_event(self._wake, delay)

    async def _flush_dirty(self) -> None:
        while self._dirty:
            sid = self._dirty.pop()
            try:
                await self._write(sid)
            except RegistryError:
                self._dirty.add(sid)
                raise

    def _build(self, sid: str, node_id: str) -> SandboxRecord:
        seq = self.seq.next()
        return self.record(sid, seq) or SandboxRecord.tombstone(sid, node_id, seq, self.clock())

    def _claiming(self, sid: str) -> bool:
        return self._claims.get(sid, 0.0) > time.monotonic()

    def _ours(self, sid: str) -> bool:
        """False for a sandbox another node took: no longer written on each change
        (its release here writes nothing; the registry would refuse it anyway), only
        by the heartbeat once the other node let go of it (_retake_moved_away)."""
        if sid not in self.moved_away:
            return True
        if self.record(sid, 0) is None:       # released here too: forget it
            self.moved_away.discard(sid)
        return False

    async def _write(self, sid: str) -> None:
        if not self._ours(sid):
            return
        rec = self._build(sid, self.node().node_id)
        claim = self._claiming(sid)
        self._check_stored([rec], [await self.registry.write_sandbox(rec, self.ttl_s, claim)])

    async def _retake_moved_away(self, node_id: str) -> None:
        """Each heartbeat, a sandbox still here that another node took is written again
        as a claim once that node's record is not served (released: a tombstone; or its
        node is dead, whose v2 record never expires by itself). So a claim held back
        past its window by an outage still gets published after the old host's release,
        and a sandbox whose new host died comes back here."""
        for sid in sorted(self.moved_away):
            if not self._ours(sid):
                try:
                    holder = await self.registry.get_sandbox(sid)
                except UnreadableRecord:
                    continue                  # not ours to overwrite; the write would say so too
                if holder is None:
                    rec = self._build(sid, node_id)
                    self._check_stored([rec], [await self.registry.write_sandbox(rec, self.ttl_s, claim=True)])

    async def _push_all(self, node: NodeRecord) -> None:
        """Rewrite every record, and tombstone the registry's records of this node that
        are not here, in batches; changes queued meanwhile go between batches."""
        self.full_pushes += 1
        ids = self.sandbox_ids()
        here = set(ids)
        ids += [sid for sid in await self.registry.node_sandboxes(node.node_id) if sid not in here]
        for start in range(0, len(ids), BATCH):
            await self._flush_dirty()
            batch = ids[start:start + BATCH]
            records = [self._build(sid, node.node_id) for sid in batch]
            claims = [self._claiming(sid) for sid in batch]
            self._check_stored(records, await self.registry.write_many(records, self.ttl_s, claims))
        await self._flush_dirty()

    def _check_stored(self, records: list[SandboxRecord], verdicts: list[Verdict]) -> None:
        """A stale write means the registry holds a newer record of ours (a clock
        that ran back); not the owner means another node claimed the sandbox (a
        move): this node stops writing it. Say so, once per sandbox."""
        for rec, verdict in zip(records, verdicts, strict=True):
            if verdict == Verdict.STORED:
                self.writes += 1
                self._claims.pop(rec.sandbox_id, None)
                self.moved_away.discard(rec.sandbox_id)
                self._refused_ids.discard(rec.sandbox_id)
                continue
            self.refused += 1
            if verdict == Verdict.UNREADABLE and rec.sandbox_id not in self._refused_ids:
                self._refused_ids.add(rec.sandbox_id)
                log.error("registry holds a record of %s this agent cannot read (another schema version, or "
                          "malformed): it is not overwritten, and edges do not serve it", rec.sandbox_id)
            elif verdict == Verdict.NOT_OWNER and rec.sandbox_id not in self.moved_away:
                self.moved_away.add(rec.sandbox_id)
                log.warning("registry: %s is now owned by another node (moved); this node stops publishing it "
                            "(until that node lets go of it)", rec.sandbox_id)
            elif verdict == Verdict.STALE and rec.sandbox_id not in self._refused_ids:
                self._refused_ids.add(rec.sandbox_id)
                log.warning("registry refused our record of %s (seq %d): it holds a newer one of ours, written "
                            "with a clock ahead of the current one; our writes are refused until this clock passes it",
                            rec.sandbox_id, rec.seq)

    def _mark_healthy(self) -> None:
        if not self.healthy:
            log.info("registry %s reachable", self.registry.url)
        self.healthy = True
        self.last_error = ""
        self.last_success = time.time()

    def _mark_unhealthy(self, error: str) -> None:
        if self.healthy or not self.last_error:
            log.warning("registry %s unavailable (%s); keeping state and retrying every %.1fs",
                        self.registry.url, error, self.retry_s)
        self.healthy = False
        self.last_error = error
        self.errors += 1
        self._need_full = True

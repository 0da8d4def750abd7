"""The usage meter: reads the kernel's usage counters, keeps the ledger
(usage/ledger.py) and persists it, and closes a released sandbox's usage.

I/O comes in as callables (the kernel reading, the open sandboxes, the
committer), so the meter holds no agent. Readings are serialized:
the ledger's fold depends on their order.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..core import ops
from ..errors import NetagentError
from ..firewall.driver import UsageReading
from ..firewall.set_dump import CutDump
from ..state import StateStore
from .ledger import KEYS, SET_OF_KEY, UNREAD, Counts, Entry, observe, reading_of

log = logging.getLogger("netagent.usage")

FOLD_CHUNK = 256   # entries folded per turn of the event loop (about 2 ms of Python)


@dataclass(frozen=True)
class MeterIO:
    read: Callable[[], Awaitable[UsageReading]]       # the kernel's counters (a worker thread)
    read_of: Callable[[list[str]], Awaitable[UsageReading]]   # the same, for these sandbox IPs only
    open_ips: Callable[[], Mapping[str, str]]         # allocated sandbox -> sandbox IP
    submit: Callable[[ops.Operation], Awaitable[Any]]  # the committer


class UsageMeter:
    def __init__(self, store: StateStore, db_lock: asyncio.Lock, io: MeterIO):
        self.store = store
        self.db_lock = db_lock
        self.io = io
        # The changed rows' SQLite transaction runs here, not on the loop: at
        # 2,000 moving sandboxes it held the loop ms at a time every reading.
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="netagent-usage-db")
        self.entries: dict[str, Entry] = {}
        self.pending: dict[str, tuple[str, int, bool]] = {}   # released: sandbox -> (ip, slot, clean it after)
        self._lock = asyncio.Lock()
        self.released_total = Counts()   # finals closed since start (metrics)
        self.read_at = 0.0                 # wall time of the last kernel reading (0: none yet)
        self.failed_readings = 0           # periodic readings given up (metrics: an alert when they repeat)
        self.readings = 0                  # full readings folded or found unchanged (benches: none given up of these)
        self.cut_readings = 0              # of those, readings with a set's dump cut by commits (taken as is)
        self._last_totals: dict[str, Counts] = {}   # open sandboxes' totals at that reading
        self._touched = 0   # bumped when entries change outside a full reading's fold
        self._folded: tuple[Any, ...] = ()   # (epoch, by_set, touched) of the last full fold

    def load(self) -> None:
        """The persisted ledger (start-up). Released rows close before reconcile
        cleans their slots (it cleans them itself: clean=False)."""
        self._touched += 1
        for sid, ip, slot, released, data in self.store.load_usage():
            self.entries[sid] = Entry.from_json(ip, json.loads(data))
            if released:
                self.pending[sid] = (ip, -1 if slot is None else slot, False)

    async def refresh(self) -> dict[str, Counts]:
        """Read the kernel, update and persist the ledger; totals of open sandboxes."""
        async with self._lock:
            return await self._refresh()

    async def _refresh(self) -> dict[str, Counts]:
        epoch, by_set = await self.io.read()
        read_at = time.time()
        self.readings += 1
        self.cut_readings += any(isinstance(s, CutDump) for s in by_set.values())
        open_ips = self.io.open_ips()
        for sid, ip in open_ips.items():
            if sid not in self.entries:
                self.entries[sid] = Entry(ip)
                self._touched += 1
        # An idle host reads the same counts again and again: the fold of
        # 2,000 entries would find nothing to do (~6 ms of the loop per reading)
        totals = self._last_totals
        if self._folded != (epoch, by_set, self._touched):
            await self._observe(list(self.entries), epoch, by_set)
            self._folded = (epoch, by_set, self._touched)
            totals = {}
        if totals.keys() != open_ips.keys():   # folded, or sandboxes released since
            totals = {sid: self.entries[sid].total for sid in open_ips if sid in self.entries}
        self.read_at, self._last_totals = read_at, totals
        return totals

    async def _observe(self, sandbox_ids: list[str], epoch: int | None, by_set: Mapping[str, Any]) -> None:
        """Fold a reading into these sandboxes' entries and persist the changed ones.
        Runs on the event loop, so it skips what did not move and lets other
        work in every FOLD_CHUNK entries: a whole reading at 2,000 sandboxes
        held the loop 55-140 ms under churn, and allocates waited behind it
        (docs/history/performance-log.md, "Sustained churn")."""
        changed: list[tuple[str, str, str]] = []
        sets = [by_set.get(SET_OF_KEY[key], {}) for key in KEYS]
        for n, sid in enumerate(sandbox_ids):
            if n and n % FOLD_CHUNK == 0:
                await asyncio.sleep(0)   # entries change only under self._lock, which we hold
            entry = self.entries[sid]
            if epoch is not None and epoch == entry.epoch and tuple(s.get(entry.ip) for s in sets) == entry.last.values:
                continue   # same table, same counts: observe() would return the entry unchanged
            kernel = reading_of(entry.ip, by_set)
            if kernel is UNREAD:
                continue   # left out of a dump commits cut: not gone, just not read this time
            new = observe(entry, kernel, epoch)
            if new != entry:
                self.entries[sid] = new
                changed.append((sid, new.ip, json.dumps(new.to_json(), separators=(",", ":"))))
        if changed:
            await self._persist(changed)

    async def _persist(self, rows: list[tuple[str, str, str]]) -> None:
        """Write the rows in one transaction on the writer thread, under the db
        lock (the committer and the pool share the connection), and return when
        they are committed: a close submitted after this reading deletes a row
        this write can no longer bring back. Cancelled meanwhile, the lock is
        still held until the write ends (the agent closes the store after)."""
        def write() -> None:
            with self.store.transaction() as tx:
                tx.save_usage(rows)
        async with self.db_lock:
            done = asyncio.get_running_loop().run_in_executor(self._writer, write)
            try:
                await asyncio.shield(done)
            except asyncio.CancelledError:
                await asyncio.wait([done])
                raise

    def close(self) -> None:
        """After the last reading: the writer thread ends (the store closes next)."""
        self._writer.shutdown(wait=True)

    def last_reading(self) -> tuple[dict[str, Counts], float]:
        """Allocated sandboxes' totals as of the last reading, and its time (no kernel
        I/O: what `netagent ls` shows). A sandbox allocated since has none yet. The
        totals are kept from the reading: summing 2,000 ledger entries again per
        call cost as much as building List's answer."""
        open_ips = self.io.open_ips()
        return {sid: t for sid, t in self._last_totals.items() if sid in open_ips}, self.read_at

    def open_totals(self) -> dict[str, Counts]:
        """As of the last reading (no kernel I/O): allocated and not yet closed sandboxes."""
        return {sid: e.total for sid, e in self.entries.items()}

    def release(self, sandbox_id: str, ip: str, slot: int) -> None:
        """Called once a release committed (slot -1: quarantined, not cleaned):
        close its usage now or at the next `close_pending`."""
        self.pending[sandbox_id] = (ip, slot, slot >= 0)

    async def close_pending(self) -> None:
        """Close every released sandbox's usage: one reading of the kernel for
        all of them, of their own elements only (one keyed netlink request per
        counter; at 20 releases/s, a full reading per release would be the
        meter's whole cost), then a CloseUsage each, submitted together so the
        committer writes them in one burst. Each records its final count
        (USAGE_FINAL) with its elements removed, in one commit. Their flows
        died when their release committed (the ct marks left live_marks), so
        nothing more is counted."""
        async with self._lock:
            batch = list(self.pending)
            if not batch:
                return
            self._touched += 1   # their entries move by a reading of their own
            for sid in batch:
                self.entries.setdefault(sid, Entry(self.pending[sid][0]))   # released before its first reading
            try:   # their elements only: a full reading lists every sandbox's (~0.15 s at 2,000)
                epoch, by_set = await self.io.read_of(sorted({self.entries[sid].ip for sid in batch}))
                await self._observe(batch, epoch, by_set)
            except NetagentError as exc:
                log.warning("reading the final usage of %d sandboxes failed (retried): %s", len(batch), exc)
                return
            # the lock is held across the commits, so no reading persists a row after it is gone
            await asyncio.gather(*(self._close(sid) for sid in batch))

    async def _close(self, sandbox_id: str) -> None:
        _, slot, clean = self.pending[sandbox_id]
        entry = self.entries[sandbox_id]
        try:
            await self.io.submit(ops.CloseUsage(sandbox_id, entry.ip, entry.total.as_dict(), slot if clean else None))
        except NetagentError as exc:
            log.warning("closing usage of %s failed (retried): %s", sandbox_id, exc)
            return
        self.entries.pop(sandbox_id, None)
        self.pending.pop(sandbox_id, None)
        self.released_total = self.released_total + entry.total

    async def run(self, interval: Callable[[], float]) -> None:
        """Read and persist every `interval` s; retry closes that failed."""
        while True:
            await asyncio.sleep(interval())
            try:
                await self.refresh()
                await self.close_pending()
            except NetagentError as exc:
                self.failed_readings += 1
                log.warning("usage reading failed: %s", exc)

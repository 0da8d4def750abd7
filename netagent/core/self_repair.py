"""Continuous reconcile: kernel notices mark slots suspect; their facts are
gathered, `plan_repairs` (core/repair.py) says what to do, the fixes are
applied and reported. A slow sweep of a few slots a second backs the notices
up (a lost notice, a full socket buffer). `check_all` is `resync`'s version:
every watched slot at once."""
from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from ..datapath.kernel_events import Notice
from ..models import SlotState
from ..workers import wait_event
from .repair import WATCHED, Fix, Repairs, SlotFacts, plan_repairs

log = logging.getLogger("netagent.repair")
SETTLE_S = 0.05       # collect a burst of notices (one change makes several) before looking


@dataclass(frozen=True)
class RepairWork:
    """The I/O behind continuous reconcile (each runs on a worker thread)."""
    gather: Callable[[list[int]], Awaitable[dict[int, SlotFacts]]]
    repair: Callable[[int, frozenset[Fix]], Awaitable[tuple[int | None, int | None]]]  # -> host veth ids
    host_links: Callable[[], Awaitable[list[tuple[str, int, int | None]]]]   # (name, index, link netns id)
    report: Callable[[Repairs, Mapping[int, frozenset[Fix]]], Awaitable[None]]  # events, quarantine rows


class SelfRepair:
    def __init__(self, prefix: str, states: Callable[[], Mapping[int, SlotState]], work: RepairWork,
                 sweep_slots_per_s: float):
        self.states = states
        self.work = work
        self.sweep_slots_per_s = sweep_slots_per_s
        self._veth = re.compile(rf"^{re.escape(prefix)}v(\d+)$")
        self._by_nsid: dict[int, int] = {}
        self._by_index: dict[int, int] = {}
        self._suspects: set[int] = set()
        self._remap = True    # list host links once (slots adopted at start), then learn each build
        self._wake = asyncio.Event()
        self._sweep_at = 0
        self.reported_taps: set[int] = set()
        self.passes = 0
        self.pass_seconds = 0.0
        self.failures = 0     # passes and slot repairs that raised (retried; metrics: an alert when they go on)

    # ---- notices -------------------------------------------------------------

    def on_notices(self, notices: Iterable[Notice]) -> None:
        for n in notices:
            if n.nsid is not None:
                slot = self._by_nsid.get(n.nsid)   # None: a slot being built, or not ours
            elif not n.rtnetlink:
                continue                 # the host table: the ruleset watcher's job
            else:
                m = self._veth.match(n.ifname or "")
                slot = int(m.group(1)) if m else self._by_index.get(n.ifindex or -1)
            if slot is not None and self.states().get(slot) in WATCHED:
                self._suspects.add(slot)
                self._wake.set()

    def overflowed(self) -> None:
        """The socket buffer overflowed: notices were lost, look at everything."""
        self._suspects.update(i for i, s in self.states().items() if s in WATCHED)
        self._remap = True
        self._wake.set()

    # ---- passes ----------------------------------------------------------------

    async def run(self) -> None:
        """Forever (cancel to stop)."""
        while True:
            await wait_event(self._wake, 1.0)
            self._wake.clear()
            await asyncio.sleep(SETTLE_S)
            slots = self._suspects | set(self._sweep_batch())
            self._suspects = set()
            try:
                await self.check(slots)
            except Exception:
                self.failures += 1
                log.exception("self-repair pass failed; retrying")
                self._suspects |= slots

    def _sweep_batch(self) -> list[int]:
        watched = sorted(i for i, s in self.states().items() if s in WATCHED)
        if not watched:
            return []
        n = max(1, round(self.sweep_slots_per_s))
        start = self._sweep_at % len(watched)
        self._sweep_at = start + n
        return (watched[start:] + watched[:start])[:n]

    async def check_all(self) -> Repairs:
        return await self.check(i for i, s in self.states().items() if s in WATCHED)

    async def check(self, slots: Iterable[int]) -> Repairs:
        t0 = time.process_time()
        if self._remap:
            await self._refresh_map()
        wanted = sorted(set(slots))
        if not wanted:
            return Repairs()
        facts = await self.work.gather(wanted)
        repairs = plan_repairs(self.states(), facts, frozenset(self.reported_taps))
        done: dict[int, frozenset[Fix]] = {}
        for idx, fixes in repairs.fixes.items():
            try:
                self.learn(idx, *await self.work.repair(idx, fixes))
                done[idx] = fixes
                log.warning("slot %d: repaired %s", idx, ", ".join(sorted(fixes)))
            except Exception:
                self.failures += 1
                log.exception("slot %d: repairing %s failed; will retry", idx, ", ".join(sorted(fixes)))
                self._suspects.add(idx)
        self.reported_taps = {i for i in self.reported_taps if i not in facts or facts[i].tap is not True}
        self.reported_taps.update(repairs.tap_lost)
        if repairs:
            await self.work.report(repairs, done)
        self.passes += 1
        self.pass_seconds += time.process_time() - t0
        return repairs

    def learn(self, slot: int, index: int | None, nsid: int | None) -> None:
        """A slot's host veth index and netns id, from its build or its repair
        (so notices name it without listing every host link)."""
        if index is not None:
            self._by_index[index] = slot
        if nsid is not None:
            self._by_nsid[nsid] = slot

    async def _refresh_map(self) -> None:
        self._remap = False
        by_nsid, by_index = {}, {}
        for name, index, nsid in await self.work.host_links():
            if m := self._veth.match(name):
                by_index[index] = int(m.group(1))
                if nsid is not None:
                    by_nsid[nsid] = int(m.group(1))
        self._by_nsid, self._by_index = by_nsid, by_index

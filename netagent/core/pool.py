"""The warm pool and slot cleaning.

Slots are built ahead of demand (netns, veth, tap, in-slot rules) so that an
allocate only takes one and adds its elements. A released slot is cleaned in
the background (conntrack flushed, leftovers removed) and then either goes
back to the pool or is torn down. A DIRTY slot is never handed out.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..config import PoolConfig
from ..errors import Exhausted, NetagentError, Unavailable
from ..models import SlotState
from ..state import StateStore
from . import ops
from .demand import Demand
from .inventory import Inventory
from .rows import Row, SlotDeleted, SlotSet

log = logging.getLogger("netagent.pool")

CLEAN_ATTEMPTS = 3     # failed cleans of one slot before it is torn down instead
CLEAN_RETRY_S = 1.0


@dataclass(frozen=True)
class PoolSettings:
    size: int               # warm slots kept when idle
    build_concurrency: int
    refill_delay_s: float   # background work waits this long after the last API call
    max_size: int = 0       # depth bound under demand (core/demand.py); below size: no growth
    demand_window_s: float = 60.0
    shrink_interval_s: float = 0.0   # at most one surplus slot torn down per this many seconds

    @classmethod
    def of(cls, pool: PoolConfig) -> PoolSettings:
        return cls(pool.size, pool.build_concurrency, pool.refill_delay_s, pool.max_size, pool.demand_window_s,
                   pool.shrink_interval_s)


@dataclass(frozen=True)
class PoolWork:
    """The kernel work the pool needs (each runs on a worker thread)."""
    build: Callable[[int], Awaitable[None]]
    destroy: Callable[[int], Awaitable[None]]
    clean: Callable[[int], Awaitable[None]]   # flush conntrack, drop leftovers


class WarmPool:
    def __init__(self, store: StateStore, db_lock: asyncio.Lock, inventory: Callable[[], Inventory],
                 capacity: int, where: str, settings: Callable[[], PoolSettings], work: PoolWork,
                 submit: Callable[[ops.Operation], Awaitable[Any]], last_call: Callable[[], float],
                 observe_build: Callable[[float], None] = lambda s: None):
        self.store = store
        self.db_lock = db_lock
        self.inventory = inventory
        self.capacity = capacity
        self.where = where   # for errors: "of 10.12.0.0/16"
        self.settings = settings
        self.work = work
        self.submit = submit
        self.last_call = last_call
        self.observe_build = observe_build
        self.ready: deque[int] = deque()
        self.building = 0
        self.demand = Demand()
        self._wake = asyncio.Event()
        self._built = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._cleaning: set[int] = set()
        self._returning: set[int] = set()   # released slots on their way back (close, clean)
        self._clean_failures: dict[int, int] = {}
        self.stopping = False   # set by Agent.stop: no new retries
        self._shrunk_at = -float("inf")   # monotonic time of the last surplus teardown

    def wake(self) -> None:
        self._wake.set()

    @property
    def busy(self) -> bool:
        return bool(self._background)

    async def drain(self) -> None:
        while self._background:
            await asyncio.wait(set(self._background), timeout=30)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write(self, row: Row) -> None:
        """A slot-state row outside a burst: SQLite first, then memory."""
        async with self.db_lock:
            with self.store.transaction() as tx:
                tx.write(row)
            self.inventory().apply(row)

    # ---- taking and returning slots ------------------------------------------

    def target(self) -> int:
        """The depth to keep now: the configured size plus recent demand, bounded."""
        s = self.settings()
        return self.demand.target(time.monotonic(), s.size, s.max_size, s.demand_window_s)

    async def take(self) -> int:
        """A warm slot; else build one now; else wait for a build in flight."""
        self.demand.record(time.monotonic())
        self._wake.set()
        while True:
            if self.ready:
                idx = self.ready.popleft()
                if self.inventory().slots.get(idx) == SlotState.READY:
                    return idx
                continue   # quarantined while it waited
            if self._free_index() is not None:
                return await self.build(for_caller=True)
            if not self.building:
                raise Exhausted(f"all {self.capacity} slots {self.where} are in use")
            self._built.clear()
            await self._built.wait()

    def forget(self, slots: tuple[int, ...]) -> None:
        """These warm slots are gone (quarantined): the pool refills without them."""
        for idx in slots:
            if idx in self.ready:
                self.ready.remove(idx)
        if slots:
            self._wake.set()

    def coming_back(self, idx: int) -> None:
        """A released slot that will be cleaned and return: the refill counts it,
        so churn does not build a new slot for every release and then tear a
        cleaned one down (measured: 241 builds and 239 teardowns a minute at 20
        cycles/s, about a third of a core)."""
        self._returning.add(idx)

    def _back_or_gone(self, idx: int) -> None:
        if idx in self._returning:
            self._returning.discard(idx)
            self._wake.set()   # the refill looks again: it may have to build after all

    def low_water(self) -> int:
        """Below this many ready slots cleaning no longer waits for a quiet moment,
        and the refill builds whatever is on its way back."""
        return max(1, self.target() // 4)

    def give_back(self, idx: int) -> None:
        if self.inventory().slots.get(idx) == SlotState.READY:
            self.ready.appendleft(idx)

    def _free_index(self) -> int | None:
        slots = self.inventory().slots
        for idx in range(self.capacity):
            if idx not in slots:
                return idx
        return None

    # ---- building and destroying ---------------------------------------------

    async def build(self, for_caller: bool = False) -> int:
        async with self.db_lock:
            idx = self._free_index()
            if idx is None:
                raise Exhausted(f"all {self.capacity} slots {self.where} are in use")
            with self.store.transaction() as tx:
                tx.write(SlotSet(idx, SlotState.BUILDING))
            self.inventory().apply(SlotSet(idx, SlotState.BUILDING))
        self.building += 1
        try:
            return await self._finish_build(idx, for_caller)
        finally:
            self.building -= 1
            self._built.set()

    async def _finish_build(self, idx: int, for_caller: bool) -> int:
        t0 = time.perf_counter()
        try:
            await self.work.build(idx)
        except Exception as exc:
            await self._write(SlotDeleted(idx))
            raise Unavailable(f"building slot {idx} failed: {exc}") from exc
        self.observe_build(time.perf_counter() - t0)
        try:
            await self.submit(ops.SlotReady(idx))
        except NetagentError:
            await self.work.destroy(idx)
            await self._write(SlotDeleted(idx))
            raise
        if not for_caller:
            self.ready.append(idx)
        return idx

    async def destroy(self, idx: int) -> None:
        """Tear a slot down: intent first, then elements, kernel objects, row."""
        await self.submit(ops.SlotGone(idx))
        await self.work.destroy(idx)
        await self._write(SlotDeleted(idx))
        self._back_or_gone(idx)   # a released slot torn down instead of cleaned (its cleans kept failing)

    async def _destroy_quietly(self, idx: int) -> None:
        try:
            await self.destroy(idx)
        except Exception:
            log.exception("destroying slot %d failed; reconcile will retry", idx)

    # ---- cleaning released slots -----------------------------------------------

    async def clean(self, slots: list[int]) -> None:
        """After release, in the background: flush each slot's conntrack (host by
        ct mark, slot netns fully), check for leftover elements, then return it
        to the pool or tear it down. A host flush walks the kernel's whole
        conntrack hash (~13 ms here), so release does not wait for it, and each
        walk waits for a quiet moment.

        A slot no longer DIRTY (cleaned by an earlier request, or torn down) is
        skipped. A failed clean is retried; after CLEAN_ATTEMPTS failures the
        slot is torn down instead (a fresh build replaces it), so one broken
        slot (its veth gone, say) never retries for ever and never holds up
        stop. While stopping it stays DIRTY: the next start's reconcile cleans it."""
        for idx in slots:
            if (state := self.inventory().slots.get(idx)) != SlotState.DIRTY or idx in self._cleaning:
                log.debug("slot %d: clean skipped (not dirty, or being cleaned)", idx)
                if state != SlotState.DIRTY:
                    self._back_or_gone(idx)
                continue
            self._cleaning.add(idx)
            try:
                await self._clean_one(idx)
            finally:
                self._cleaning.discard(idx)
                if self.inventory().slots.get(idx) == SlotState.READY:
                    self._back_or_gone(idx)

    async def _clean_one(self, idx: int) -> None:
        await self.wait_quiet()
        try:
            await self.work.clean(idx)
        except Exception as exc:
            failures = self._clean_failures[idx] = self._clean_failures.get(idx, 0) + 1
            if self.stopping:
                log.warning("cleaning slot %d failed while stopping: %s; it stays dirty for the next start", idx, exc)
            elif failures >= CLEAN_ATTEMPTS:
                log.error("cleaning slot %d failed %d times (last: %s); tearing it down instead", idx, failures, exc)
                self._clean_failures.pop(idx, None)
                self.spawn(self._destroy_quietly(idx))
            else:
                log.exception("cleaning slot %d failed; retrying in 1 s (it stays dirty)", idx)
                self.spawn(self._retry_clean(idx))
            return
        self._clean_failures.pop(idx, None)
        if len(self.ready) >= self.target():
            self.spawn(self._destroy_quietly(idx))
            return
        await self._write(SlotSet(idx, SlotState.READY))
        self.ready.append(idx)

    async def _retry_clean(self, idx: int) -> None:
        await asyncio.sleep(CLEAN_RETRY_S)
        if not self.stopping:
            await self.clean([idx])

    async def wait_quiet(self) -> None:
        """Background work (refill builds, conntrack walks) competes with API
        calls for the CPU and the GIL: let a burst of calls pass first, unless
        the pool runs low."""
        s = self.settings()
        while len(self.ready) >= self.low_water() and time.monotonic() - self.last_call() < s.refill_delay_s:
            await asyncio.sleep(s.refill_delay_s)

    async def fill(self) -> None:
        """Keep `target()` warm slots (forever; cancel to stop). Above it (demand
        has passed), one surplus slot is torn down per quiet moment, at most
        one per `shrink_interval_s`."""
        backoff = 0.0
        while True:
            s = self.settings()
            target = self.target()
            missing = self._missing(target)
            if missing <= 0:
                if len(self.ready) > target and not self.building:
                    if await self._shrink_paused(s.shrink_interval_s):
                        continue   # woken meanwhile: demand may be back
                    await self.wait_quiet()
                    if len(self.ready) > self.target():
                        self._shrunk_at = time.monotonic()
                        await self._destroy_quietly(self.ready.pop())
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):   # re-read the target as demand ages
                    async with asyncio.timeout(max(1.0, s.demand_window_s / 10)):
                        await self._wake.wait()
                continue
            await self.wait_quiet()
            missing = self._missing(self.target())   # releases may have come meanwhile
            if missing <= 0:
                continue
            n = min(missing, s.build_concurrency)
            results = await asyncio.gather(*(self.build() for _ in range(n)), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                backoff = min(max(backoff * 2, 0.1), 5.0)
                log.warning("pool refill: %d build(s) failed: %s; retrying in %.1fs", len(errors), errors[0], backoff)
                await asyncio.sleep(backoff)
            else:
                backoff = 0.0

    async def _shrink_paused(self, interval: float) -> bool:
        """Wait until the next surplus teardown is due; True if woken first.
        A teardown costs ~10 ms of CPU (an nft transaction, the links, the
        netns, its notices): 240 surplus slots torn down back to back kept an
        idle agent at 5-9% of a core for the minute after a burst's demand
        window (docs/performance.md, "An idle host"); paced, the same work
        costs a fraction of a percent, spread out."""
        wait = self._shrunk_at + interval - time.monotonic()
        if wait <= 0:
            return False
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()
                return True
        return False

    def _missing(self, target: int) -> int:
        """Slots to build now: up to the depth, counting released slots on their
        way back. Not below half the low-water mark whatever is on its way back
        (cleaning is stuck, say). Not the low-water mark itself: under steady
        churn the pool sits there (cleaning waits for it), and building there
        replaced slots that were about to come back (196 builds and teardowns
        a minute at 20 cycles/s)."""
        have = len(self.ready) + self.building
        floor = min(target, max(1, self.low_water() // 2))   # a pool of size 0 keeps none
        want = max(target - have - len(self._returning), floor - have)
        return min(want, self.capacity - len(self.inventory().slots))

    async def wait_ready(self, want: int, free: Callable[[], int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ready) < min(want, free()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"pool has {len(self.ready)} of {want} slots")
            await asyncio.sleep(0.02)


class Inflight:
    """One run per key at a time: a concurrent retry of the same call waits for
    the first one's result instead of doing the work twice."""

    def __init__(self) -> None:
        self._futures: dict[tuple[str, str], asyncio.Future[Any]] = {}

    def pending(self, key: tuple[str, str]) -> asyncio.Future[Any] | None:
        return self._futures.get(key)

    async def run(self, key: tuple[str, str], work: Callable[[], Awaitable[Any]]) -> Any:
        if key in self._futures:
            return await asyncio.shield(self._futures[key])
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[key] = future
        try:
            result = await work()
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._futures.pop(key, None)

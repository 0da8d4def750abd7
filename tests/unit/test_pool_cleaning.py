"""The warm pool's cleaning of released slots, against fake kernel work:
a slot is cleaned once, a clean that keeps failing ends in a teardown
instead of retrying for ever, and stop is never held up by retries."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from netagent.core import ops, pool
from netagent.core.inventory import Inventory
from netagent.core.pool import PoolSettings, PoolWork, WarmPool
from netagent.core.rows import SlotSet
from netagent.models import SlotState
from netagent.state import StateStore


class FakeWork:
    def __init__(self, clean_fails: int = 0):
        self.clean_fails = clean_fails
        self.cleaned: list[int] = []
        self.destroyed: list[int] = []

    async def build(self, idx: int) -> None:
        pass

    async def destroy(self, idx: int) -> None:
        self.destroyed.append(idx)

    async def clean(self, idx: int) -> None:
        self.cleaned.append(idx)
        await asyncio.sleep(0.01)
        if self.clean_fails:
            self.clean_fails -= 1
            raise OSError("no interface with this name")


def make_pool(tmp_path, work: FakeWork, size: int = 4) -> tuple[WarmPool, Inventory, list[ops.Operation]]:
    inv = Inventory((20000, 20010))
    submitted: list[ops.Operation] = []

    async def submit(op: ops.Operation) -> None:
        submitted.append(op)

    p = WarmPool(StateStore(tmp_path), asyncio.Lock(), lambda: inv, 8, "of the test",
                 lambda: PoolSettings(size, 1, 0.0), PoolWork(work.build, work.destroy, work.clean),
                 submit, lambda: 0.0)
    return p, inv, submitted


async def released_then_settled(p: WarmPool, inv: Inventory, idx: int, stop: bool = False) -> None:
    inv.apply(SlotSet(idx, SlotState.DIRTY))
    await p.clean([idx])
    p.stopping = stop
    async with asyncio.timeout(5):
        await p.drain()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(pool, "CLEAN_RETRY_S", 0.01)


async def test_a_slot_asked_twice_is_cleaned_once(tmp_path):
    work = FakeWork()
    p, inv, _ = make_pool(tmp_path, work)
    inv.apply(SlotSet(1, SlotState.DIRTY))
    await asyncio.gather(p.clean([1]), p.clean([1]))
    await p.clean([1])   # after it: READY, not dirty
    assert work.cleaned == [1]
    assert inv.slots[1] == SlotState.READY and list(p.ready) == [1]


async def test_a_clean_that_keeps_failing_tears_the_slot_down(tmp_path):
    work = FakeWork(clean_fails=100)
    p, inv, submitted = make_pool(tmp_path, work)
    await released_then_settled(p, inv, 1)
    assert work.cleaned == [1] * pool.CLEAN_ATTEMPTS
    assert submitted == [ops.SlotGone(1)] and work.destroyed == [1]
    assert 1 not in inv.slots and not p.ready


async def test_a_clean_that_fails_once_is_retried(tmp_path):
    work = FakeWork(clean_fails=1)
    p, inv, _ = make_pool(tmp_path, work)
    await released_then_settled(p, inv, 1)
    assert work.cleaned == [1, 1] and inv.slots[1] == SlotState.READY and not work.destroyed


async def test_stopping_ends_the_retries_and_the_slot_stays_dirty(tmp_path):
    work = FakeWork(clean_fails=100)
    p, inv, _ = make_pool(tmp_path, work)
    await released_then_settled(p, inv, 1, stop=True)
    assert work.cleaned == [1] and inv.slots[1] == SlotState.DIRTY and not work.destroyed


class CountingWork(FakeWork):
    """Builds counted; cleans wait until `cleans_may_finish` is set (then fail
    `clean_fails` times)."""
    def __init__(self) -> None:
        super().__init__()
        self.built: list[int] = []
        self.cleans_may_finish = asyncio.Event()

    async def build(self, idx: int) -> None:
        self.built.append(idx)

    async def clean(self, idx: int) -> None:
        await self.cleans_may_finish.wait()
        await super().clean(idx)


def filling_pool(tmp_path, work: CountingWork) -> tuple[WarmPool, Inventory]:
    """A pool of 4 whose SlotReady commits mark the slot ready."""
    inv = Inventory((20000, 20010))

    async def submit(op: ops.Operation) -> None:
        if isinstance(op, ops.SlotReady):
            inv.apply(SlotSet(op.slot, SlotState.READY))
    p = WarmPool(StateStore(tmp_path), asyncio.Lock(), lambda: inv, 16, "of the test",
                 lambda: PoolSettings(4, 1, 0.0), PoolWork(work.build, work.destroy, work.clean), submit, lambda: 0.0)
    return p, inv


@contextlib.asynccontextmanager
async def filling(p: WarmPool) -> AsyncIterator[None]:
    """The pool's refill running for the block."""
    task = asyncio.create_task(p.fill())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def released(p: WarmPool, inv: Inventory) -> int:
    """A ready slot taken and released: dirty, on its way back."""
    async with asyncio.timeout(5):
        await p.wait_ready(4, lambda: 16, timeout=5)
    idx = await p.take()
    inv.apply(SlotSet(idx, SlotState.DIRTY))
    p.coming_back(idx)
    return idx


async def test_a_released_slot_on_its_way_back_is_not_replaced_by_a_build(tmp_path):
    """Under churn the refill counted only ready slots: each release made it
    build a new slot, and the cleaned one was then torn down as surplus."""
    work = CountingWork()
    p, inv = filling_pool(tmp_path, work)
    async with filling(p):
        idx = await released(p, inv)
        assert len(work.built) == 4
        cleaning = asyncio.create_task(p.clean([idx]))
        await asyncio.sleep(0.2)                   # the refill ran meanwhile
        assert len(work.built) == 4, "built a replacement for a slot being cleaned"
        work.cleans_may_finish.set()
        async with asyncio.timeout(5):
            await cleaning
        await asyncio.sleep(0.1)
        assert list(p.ready).count(idx) == 1 and len(p.ready) == 4
        assert work.destroyed == [] and len(work.built) == 4


async def test_a_slot_that_does_not_come_back_is_replaced(tmp_path):
    work = CountingWork()
    p, inv = filling_pool(tmp_path, work)
    async with filling(p):
        idx = await released(p, inv)
        inv.apply(SlotSet(idx, SlotState.QUARANTINED))   # it will not be cleaned after all
        await p.clean([idx])                             # skipped: not dirty
        async with asyncio.timeout(5):
            await p.wait_ready(4, lambda: 16, timeout=5)
        assert len(work.built) == 5


async def test_a_slot_torn_down_after_failed_cleans_is_replaced(tmp_path):
    work = CountingWork()
    work.clean_fails = 100
    work.cleans_may_finish.set()
    p, inv = filling_pool(tmp_path, work)
    async with filling(p):
        idx = await released(p, inv)
        await p.clean([idx])
        async with asyncio.timeout(5):
            await p.drain()                              # retries, then the teardown
            await p.wait_ready(4, lambda: 16, timeout=5)
        assert work.destroyed == [idx] and len(work.built) == 5


async def test_a_pool_of_size_zero_builds_nothing(tmp_path):
    work = CountingWork()
    p, _ = filling_pool(tmp_path, work)
    p.settings = lambda: PoolSettings(0, 1, 0.0)
    async with filling(p):
        await asyncio.sleep(0.2)
        assert work.built == []


async def test_surplus_slots_are_torn_down_one_per_shrink_interval(tmp_path):
    """Demand has passed: the surplus goes one slot at a time, paced (240 torn
    down back to back kept an idle agent at 5-9% of a core for a minute)."""
    work = CountingWork()
    p, _ = filling_pool(tmp_path, work)
    async with filling(p):
        async with asyncio.timeout(5):
            await p.wait_ready(4, lambda: 16, timeout=5)
        p.settings = lambda: PoolSettings(0, 1, 0.0, shrink_interval_s=3600)
        p.wake()
        async with asyncio.timeout(5):
            while not work.destroyed:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)   # unpaced, the other three went meanwhile
        assert len(work.destroyed) == 1 and len(p.ready) == 3
        p.settings = lambda: PoolSettings(0, 1, 0.0, shrink_interval_s=0)
        p.wake()
        async with asyncio.timeout(5):
            while p.ready:
                await asyncio.sleep(0.01)
        assert len(work.destroyed) == 4

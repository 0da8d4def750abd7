"""The warm pool's depth follows demand (core/demand.py, core/pool.py) on a
real agent: it grows after a burst, within its bound, and shrinks back to
its size, tearing the surplus slots down, once the burst is out of the window."""
from __future__ import annotations

import asyncio

from netagent.agent import Agent
from tests.conftest import agent_config
from tests.testbed.bed import eventually


def slot_netns(bed) -> int:
    from netagent import netns
    return len(netns.list_names(f"{bed.agent_prefix}-"))


async def test_the_pool_grows_after_a_burst_within_its_bound_and_shrinks_when_it_ages_out(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=2, pool_max_size=8, pool_demand_window_s=4.0))
    await agent.start()
    try:
        await agent.wait_pool_ready()
        await asyncio.gather(*(agent.allocate(f"burst-{i}") for i in range(10)))
        # 2 + 10 recent allocations, bounded at 8
        assert await eventually(lambda: len(agent.ready) == 8 and not agent._building, timeout=30)
        await asyncio.sleep(1.0)
        assert len(agent.ready) == 8   # never past the bound
        # the burst ages out of the 4 s window: back to 2 warm slots, the 6 others torn down
        assert await eventually(lambda: len(agent.ready) == 2, timeout=20)
        assert await eventually(lambda: slot_netns(bed) == 10 + 2, timeout=10)
    finally:
        await agent.stop()


async def test_a_fixed_pool_does_not_grow(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=2, pool_max_size=2))
    await agent.start()
    try:
        await agent.wait_pool_ready()
        await asyncio.gather(*(agent.allocate(f"burst-{i}") for i in range(10)))
        assert await eventually(lambda: len(agent.ready) == 2 and not agent._building, timeout=30)
        await asyncio.sleep(1.5)
        assert len(agent.ready) == 2 and slot_netns(bed) == 12
    finally:
        await agent.stop()

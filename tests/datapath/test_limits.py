"""Bandwidth limits (issue #14): a tbf qdisc at each end of the slot's veth,
set at Allocate and changed at runtime, enforced (a download cannot beat its
limit), cleared by release; bad limits refused with nothing changed. How close
to the limit TCP gets is `make bench` (tests/bench/limit_bench.py)."""
from __future__ import annotations

import asyncio
import json

import pytest

from netagent.agent import Agent
from netagent.errors import InvalidArgument
from tests.conftest import agent_config
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, WEB_IP, eventually


def root_qdisc(ns: str, dev: str) -> dict:
    return json.loads(sh.run("tc", "-j", "qdisc", "show", "dev", dev, "root", ns=ns).stdout)[0]


def tbf_rate(ns: str, dev: str) -> int | None:
    """bits/s of the link's root tbf (None: no tbf there)."""
    q = root_qdisc(ns, dev)
    return q["options"]["rate"] * 8 if q["kind"] == "tbf" else None


def rates(bed, agent, net) -> tuple[int | None, int | None]:
    """(egress, ingress) as the kernel has them: slot veth0, host veth."""
    return tbf_rate(net.netns, agent.config.guest.veth_name), tbf_rate(bed.host, net.host_veth)


async def download_seconds(netns: str, size: int) -> float:
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.download",
                                  f"http://{WEB_IP}:{HTTP_PORT}/bytes?n={size}", "--stall", "20", ns=netns, timeout=60)
    out = json.loads(res.stdout)
    assert out.get("bytes") == size, out
    return float(out["seconds"])


async def test_limits_are_set_enforced_changed_and_cleared(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=1))
    await agent.start()
    try:
        net = await agent.allocate("lim-1", {"limits": {"egress_bps": 5_000_000, "ingress_bps": 2_000_000}})
        assert (net.limits.egress_bps, net.limits.ingress_bps) == (5_000_000, 2_000_000)
        assert rates(bed, agent, net) == (5_000_000, 2_000_000)
        # 500 kB at 2 Mbit/s is 2 s of wire time; the burst (16 KiB) buys 0.07 s
        assert await download_seconds(net.netns, 500_000) >= 1.8

        await agent.set_limits("lim-1", {"ingress_bps": 50_000_000})   # egress now unlimited
        assert rates(bed, agent, net) == (None, 50_000_000)
        assert (await agent.get("lim-1")).limits.ingress_bps == 50_000_000

        with pytest.raises(InvalidArgument):
            await agent.set_limits("lim-1", {"ingress_bps": 10})          # below 8 kbit/s
        with pytest.raises(InvalidArgument):
            await agent.allocate("lim-2", {"limits": {"egress_mbps": 1}})  # unknown field
        assert rates(bed, agent, net) == (None, 50_000_000) and "lim-2" not in agent.allocations
    finally:
        await agent.stop()

    # a restarted agent keeps them; release clears both ends for the next tenant
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=2))
    await agent.start(fill_pool=False)   # no refills: the released slot is cleaned and stays warm
    try:
        assert (await agent.get("lim-1")).limits.ingress_bps == 50_000_000
        assert rates(bed, agent, net) == (None, 50_000_000)
        await agent.release("lim-1")
        assert await eventually(lambda: net.slot in agent.ready, timeout=10)
        assert rates(bed, agent, net) == (None, None)
    finally:
        await agent.stop()

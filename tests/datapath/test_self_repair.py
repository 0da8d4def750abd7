"""Continuous reconcile on a real kernel: a slot's kernel objects broken by
hand are repaired while the agent runs, and traffic through them resumes."""
from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest

from netagent.agent import Agent
from netagent.models import SlotState
from tests.conftest import agent_config
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, UPLINK_IP, WEB_IP, LightGuest, eventually

URL = f"http://{WEB_IP}:{HTTP_PORT}/"
BREAKS = {
    "host veth deleted": lambda bed, net: sh.ip("link", "del", net.host_veth, ns=bed.host),
    "host veth down": lambda bed, net: sh.ip("link", "set", net.host_veth, "down", ns=bed.host),
    "slot veth down": lambda bed, net: sh.ip("link", "set", "veth0", "down", ns=net.netns),
    "slot route deleted": lambda bed, net: sh.ip("route", "del", "default", ns=net.netns),
    # the host's route to the sandbox is the connected /31 of its host veth address
    "host route deleted": lambda bed, net: sh.ip("addr", "del", f"{ipaddress.IPv4Address(net.sandbox_ip) - 1}/31",
                                                 "dev", net.host_veth, ns=bed.host),
    "in-slot table deleted": lambda bed, net: sh.run("nft", "delete", "table", "ip", "netagent_slot", ns=net.netns),
}


async def fetch(guest: LightGuest, timeout: float = 1.0) -> tuple[bool, str]:
    """Off the event loop: the agent under test keeps running meanwhile."""
    return await asyncio.to_thread(guest.fetch, URL, timeout)


async def until_fetch_works(guest: LightGuest, within: float) -> float:
    """Seconds until a fetch through the guest succeeds (fails the test past `within`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        ok, _ = await fetch(guest)
        if ok:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    pytest.fail(f"traffic did not resume within {within} s")


def event_types(agent: Agent, sandbox_id: str) -> list[str]:
    return [row[2] for row in agent.store.events_after(0, 10_000) if row[3] == sandbox_id]


@pytest.mark.parametrize("what", list(BREAKS))
async def test_a_broken_slot_is_repaired_within_5s_and_traffic_resumes(bed, agent, what):
    net = await agent.allocate("fix-1")
    guest = LightGuest.attach(bed, net, "a")
    ok, body = await fetch(guest, 3.0)
    assert ok and UPLINK_IP in body, body
    BREAKS[what](bed, net)
    t0 = time.monotonic()
    await until_fetch_works(guest, within=5.0)
    # a deleted in-slot table blocks nothing, so traffic may work before the repair:
    # the repair is awaited too, within the same 5 s
    assert await eventually(lambda: "slot_repaired" in event_types(agent, "fix-1"),
                            timeout=max(0.1, 5.0 - (time.monotonic() - t0)))
    assert agent.slots[net.slot] == SlotState.ALLOCATED


async def test_resync_repairs_at_once_when_continuous_reconcile_is_off(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", self_repair=False))
    await agent.start()
    try:
        net = await agent.allocate("fix-2")
        guest = LightGuest.attach(bed, net, "b")
        assert (await fetch(guest, 3.0))[0]
        sh.ip("route", "del", "default", ns=net.netns)
        await asyncio.sleep(1.5)
        assert not (await fetch(guest))[0], "nothing repairs it without a resync"
        result = await agent.repair()
        assert result["slots_repaired"] == 1 and result["slots_quarantined"] == 0, result
        assert await until_fetch_works(guest, within=2.0) < 2.0
    finally:
        await agent.stop()


async def test_a_deleted_tap_is_reported_as_an_event_and_a_metric(bed, agent):
    net = await agent.allocate("fix-3")
    sh.ip("link", "del", net.tap, ns=net.netns)
    assert await eventually(lambda: "tap_lost" in event_types(agent, "fix-3"), timeout=5)
    text = agent.metrics.render().decode()
    assert "netagent_taps_lost_total 1.0" in text, text
    await asyncio.sleep(1.5)
    assert event_types(agent, "fix-3").count("tap_lost") == 1   # once, not on every pass
    assert agent.slots[net.slot] == SlotState.ALLOCATED


async def test_a_deleted_slot_netns_quarantines_the_slot_for_good(bed, agent):
    net = await agent.allocate("fix-4")
    sh.ip("netns", "del", net.netns)
    assert await eventually(lambda: "slot_quarantined" in event_types(agent, "fix-4"), timeout=5)
    assert agent.slots[net.slot] == SlotState.QUARANTINED
    assert "netagent_slots_quarantined_total 1.0" in agent.metrics.render().decode()
    assert await agent.release("fix-4") is True
    await asyncio.sleep(0.5)
    assert agent.slots[net.slot] == SlotState.QUARANTINED and net.slot not in agent.ready
    others = [await agent.allocate(f"fix-4-{i}") for i in range(4)]
    assert net.slot not in {n.slot for n in others}


async def test_a_warm_slot_without_its_netns_leaves_the_pool_and_the_pool_refills(bed, agent):
    await agent.wait_pool_ready(timeout=30)
    warm = agent.ready[0]
    sh.ip("netns", "del", agent.plan.netns(warm))
    assert await eventually(lambda: agent.slots.get(warm) == SlotState.QUARANTINED, timeout=5)
    assert warm not in agent.ready
    assert await eventually(lambda: len(agent.ready) >= agent.config.pool.size, timeout=10)
    net = await agent.allocate("fix-5")
    assert net.slot != warm

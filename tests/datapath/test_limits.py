"""Bandwidth and packet-rate limits (issue #14). Bandwidth: a tbf qdisc at each
end of the slot's veth, set at Allocate and changed at runtime, enforced (a
download cannot beat its limit), cleared by release. Packet rate: the slot's
netagent_pps table (rules/pps.nft) polices UDP floods from and to a light
guest to rate x time + burst, changed at runtime, removed for unlimited, back
after a rebuild, gone from a reused slot. Bad limits refused with nothing
changed. How close to the limits TCP and floods get is `make bench`
(tests/bench/limit_bench.py)."""
from __future__ import annotations

import asyncio
import json

import pytest

from netagent.agent import Agent
from netagent.errors import InvalidArgument
from tests.conftest import agent_config
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, WEB_IP, LightGuest, eventually


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


# ---- packet-rate limits ----

SINK_PORT, FLOOD_PORT = 9020, 9021   # udp_flood's sink and flood server, in the internet netns
FLOOD_S = 2.0
PPS = 1_000


async def flood_out(bed, guest: LightGuest) -> dict:
    """The guest sends as fast as it can; what the internet sink counted."""
    sink = bed.start_module(bed.inet, "tests.testbed.udp_flood", "sink", WEB_IP, str(SINK_PORT))
    await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.udp_flood", "send", WEB_IP, str(SINK_PORT),
                            str(FLOOD_S), ns=guest.name)
    return json.loads(await asyncio.to_thread(sink.stdout.readline))


async def flood_in(guest: LightGuest) -> dict:
    """The guest asks the internet flood server; what came back to it, counted there."""
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.udp_flood", "ask", WEB_IP,
                                  str(FLOOD_PORT), str(FLOOD_S), ns=guest.name)
    return json.loads(res.stdout)


def assert_policed(got: dict, pps: int, burst: int) -> None:
    """A flood faster than the rate for all of its span passes rate x span + burst (+-10%)."""
    want = pps * got["span"] + burst
    assert got["span"] >= 0.75 * FLOOD_S and abs(got["packets"] - want) <= 0.1 * want, (got, want)


def assert_unpoliced(got: dict, pps: int) -> None:
    """Far more than the limit would pass: at least 3x (the test bed's frame relay caps it)."""
    assert got["packets"] >= 3 * (pps * got["span"] + pps // 10), got


def pps_table(ns: str) -> str | None:
    res = sh.run("nft", "list", "table", "ip", "netagent_pps", ns=ns, check=False)
    return res.stdout if res.returncode == 0 else None


def start_flood_server(bed) -> None:
    bed.start_module(bed.inet, "tests.testbed.udp_flood", "flood", WEB_IP, str(FLOOD_PORT))


async def test_packet_rate_limits_police_floods_each_way_and_spare_the_unlimited(bed, tmp_path):
    start_flood_server(bed)
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=2))
    await agent.start()
    try:
        net = await agent.allocate("pps-1", {"limits": {"egress_pps": PPS, "ingress_pps": PPS}})
        assert (net.limits.egress_pps, net.limits.ingress_pps, net.limits.burst_packets) == (PPS, PPS, None)
        free = await agent.allocate("pps-free")
        limited, unlimited = LightGuest.attach(bed, net, "a"), LightGuest.attach(bed, free, "b")
        assert_policed(await flood_out(bed, limited), PPS, PPS // 10)
        assert_unpoliced(await flood_out(bed, unlimited), PPS)
        assert_policed(await flood_in(limited), PPS, PPS // 10)
        assert_unpoliced(await flood_in(unlimited), PPS)
        assert pps_table(free.netns) is None
    finally:
        await agent.stop()


async def test_packet_rate_change_at_runtime_and_unlimited_removes_the_table(bed, tmp_path):
    start_flood_server(bed)
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=1))
    await agent.start()
    try:
        net = await agent.allocate("pps-2", {"limits": {"egress_pps": PPS}})
        guest = LightGuest.attach(bed, net, "a")
        assert_policed(await flood_out(bed, guest), PPS, PPS // 10)
        assert_unpoliced(await flood_in(guest), PPS)   # ingress was never limited

        await agent.set_limits("pps-2", {"egress_pps": 300, "ingress_pps": 200, "burst_packets": 50})
        assert_policed(await flood_out(bed, guest), 300, 50)
        assert_policed(await flood_in(guest), 200, 50)
        assert (await agent.get("pps-2")).limits.burst_packets == 50

        table = pps_table(net.netns)
        for bad in ({"egress_pps": 5}, {"ingress_pps": 10**9}, {"burst_packets": 0}, {"egress_pkts": 9}):
            with pytest.raises(InvalidArgument):
                await agent.set_limits("pps-2", bad)
            with pytest.raises(InvalidArgument):
                await agent.allocate("pps-bad", {"limits": bad})
        assert pps_table(net.netns) == table and "pps-bad" not in agent.allocations
        assert (await agent.get("pps-2")).limits.egress_pps == 300

        await agent.set_limits("pps-2", {"egress_bps": 50_000_000})   # a byte rate only: no packet-rate table
        assert pps_table(net.netns) is None
        assert_unpoliced(await flood_out(bed, guest), 300)
    finally:
        await agent.stop()


async def test_packet_rate_limit_survives_a_slot_rebuild_and_leaves_with_release(bed, tmp_path):
    start_flood_server(bed)
    first = Agent(agent_config(bed, tmp_path / "state", pool_size=1))
    await first.start()
    net = await first.allocate("pps-3", {"limits": {"ingress_pps": PPS}})
    await first.stop()
    sh.ip("netns", "del", net.netns)   # the slot vanishes: reconcile rebuilds it, without its table
    assert await eventually(lambda: net.host_veth not in sh.links(bed.host), timeout=5)

    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=1))
    await agent.start(fill_pool=False)   # no refills: the released slot is cleaned and taken again
    try:
        assert agent.stats["last_reconcile"]["rebuilt"] == 1
        guest = LightGuest.attach(bed, await agent.get("pps-3"), "a")
        assert_policed(await flood_in(guest), PPS, PPS // 10)
        guest.stop()

        await agent.release("pps-3")
        assert await eventually(lambda: net.slot in agent.ready, timeout=10)
        again = await agent.allocate("pps-4")
        assert again.slot == net.slot and pps_table(again.netns) is None
        assert_unpoliced(await flood_in(LightGuest.attach(bed, again, "b")), PPS)
    finally:
        await agent.stop()

"""A slot's neighbour entries are pinned (datapath.md, "Neighbours"): after traffic
both ways, the slot netns and the host hold only permanent entries for the slot,
with the MACs the agent gave the veth ends and the guest. Dynamic entries would
count against the kernel's neighbour table, shared by every netns (gc_thresh3,
1,024 by default: more than ~340 talking slots overflowed it)."""
from __future__ import annotations

import json

from netagent.agent import Agent
from tests.conftest import agent_config
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, UPLINK_IP, WEB_IP, LightGuest


def neighbours(ns: str, dev: str | None = None) -> dict[str, tuple[str, str, list[str]]]:
    where = ("dev", dev) if dev else ()
    out = sh.ip("-j", "-4", "neigh", "show", "nud", "all", *where, ns=ns).stdout
    return {e["dst"]: (e.get("dev", dev), e.get("lladdr", ""), e["state"]) for e in json.loads(out or "[]")}


async def test_a_slot_talks_both_ways_with_pinned_neighbours_only(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=0))
    await agent.start()
    try:
        net = await agent.allocate("nb-1")
        slot = agent.plan.slot(net.slot)
        g = agent.config.guest
        guest = LightGuest.attach(bed, net, "n")
        bed.start_server(guest.name, "--http", "8080")
        port = await agent.expose("nb-1", 8080)
        ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")      # out: guest -> slot -> host
        assert ok, body
        ok, body = bed.fetch(bed.inet, f"http://{UPLINK_IP}:{port}/")   # in: DNAT -> slot -> guest
        assert ok, body

        assert neighbours(slot.netns) == {
            str(slot.host_ip): (g.veth_name, slot.host_mac, ["PERMANENT"]),
            str(g.guest_ip): (g.tap_name, g.guest_mac, ["PERMANENT"]),
        }
        assert neighbours(bed.host, slot.host_veth) == {
            str(slot.sandbox_ip): (slot.host_veth, slot.sandbox_mac, ["PERMANENT"])}
        links = json.loads(sh.ip("-j", "link", "show", slot.host_veth, ns=bed.host).stdout)
        assert links[0]["address"] == slot.host_mac
        guest.stop()
    finally:
        await agent.stop()

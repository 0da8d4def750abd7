"""Sticky egress addresses (issue #14): the uplink carries two extra
addresses; each sandbox leaves from the one it was given (the internet-side
server sees it), changing it at runtime flushes that sandbox's NAT flows and
no one else's, and it survives an agent restart."""
from __future__ import annotations

import json

import pytest

from netagent.agent import Agent
from netagent.errors import InvalidArgument
from tests.conftest import agent_config
from tests.datapath.helpers import conntrack_count, elements
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, UPLINK_IP, WEB_IP, LightGuest

EGRESS_A, EGRESS_B = "198.51.100.3", "198.51.100.4"


def client_address(guest: LightGuest) -> str:
    ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")
    assert ok, body
    return json.loads(body)["client"]


async def test_each_sandbox_leaves_from_its_egress_address_and_a_change_flushes_only_its_flows(bed, tmp_path):
    for addr in (EGRESS_A, EGRESS_B):
        sh.ip("addr", "add", f"{addr}/24", "dev", "up0", ns=bed.host)
    cfg = agent_config(bed, tmp_path / "state", egress_addresses=[EGRESS_A, EGRESS_B])
    agent = Agent(cfg)
    await agent.start()
    guests: list[LightGuest] = []
    try:
        a = await agent.allocate("egr-a", {"egress_address": EGRESS_A})
        b = await agent.allocate("egr-b", {"egress_address": EGRESS_B})
        c = await agent.allocate("egr-c")
        assert (a.egress_address, b.egress_address, c.egress_address) == (EGRESS_A, EGRESS_B, "")
        guests = [LightGuest.attach(bed, n, name) for n, name in ((a, "a"), (b, "b"), (c, "c"))]
        ga, gb, gc = guests
        assert [client_address(g) for g in guests] == [EGRESS_A, EGRESS_B, UPLINK_IP]

        # bad input is refused with no side effect
        with pytest.raises(InvalidArgument, match="egress_addresses"):
            await agent.allocate("egr-d", {"egress_address": "198.51.100.9"})
        with pytest.raises(InvalidArgument):
            await agent.set_egress_address("egr-a", "not-an-address")
        assert "egr-d" not in agent.allocations and (await agent.get("egr-a")).egress_address == EGRESS_A

        # a runtime change: a's NAT flows (ct mark of flows it started) go, b's stay
        mark_a, mark_b = (str(agent.plan.slot(n.slot).ct_mark) for n in (a, b))
        assert conntrack_count(bed.host, "-m", mark_a) > 0 and conntrack_count(bed.host, "-m", mark_b) > 0
        moved = await agent.set_egress_address("egr-a", EGRESS_B)
        assert moved.egress_address == EGRESS_B
        assert conntrack_count(bed.host, "-m", mark_a) == 0 and conntrack_count(bed.host, "-m", mark_b) > 0
        assert client_address(ga) == EGRESS_B and client_address(gb) == EGRESS_B
        assert (await agent.set_egress_address("egr-a", EGRESS_B)).egress_address == EGRESS_B   # idempotent

        # back to the uplink's own address, and c given one at runtime
        await agent.set_egress_address("egr-a", "")
        await agent.set_egress_address("egr-c", EGRESS_A)
        assert [client_address(g) for g in guests] == [UPLINK_IP, EGRESS_B, EGRESS_A]
        snat = {e[0]: e[1] for e in elements(bed.host, bed.agent_prefix, "egress_snat")}
        assert snat == {b.sandbox_ip: EGRESS_B, c.sandbox_ip: EGRESS_A}
    finally:
        await agent.stop()

    # a restarted agent keeps every sandbox's address
    agent = Agent(cfg)
    await agent.start()
    try:
        assert [(await agent.get(s)).egress_address for s in ("egr-a", "egr-b", "egr-c")] == ["", EGRESS_B, EGRESS_A]
        assert [client_address(g) for g in guests] == [UPLINK_IP, EGRESS_B, EGRESS_A]
        await agent.release("egr-b")
        assert {e[0] for e in elements(bed.host, bed.agent_prefix, "egress_snat")} == {c.sandbox_ip}
    finally:
        await agent.stop()
        for g in guests:
            g.stop()


async def test_a_label_gives_its_sandboxes_the_labels_egress_address(bed, tmp_path):
    for addr in (EGRESS_A, EGRESS_B):
        sh.ip("addr", "add", f"{addr}/24", "dev", "up0", ns=bed.host)
    cfg = agent_config(bed, tmp_path / "state", egress_addresses=[EGRESS_A, EGRESS_B],
                       egress_by_label={"team=red": EGRESS_B})
    agent = Agent(cfg)
    await agent.start()
    guests: list[LightGuest] = []
    try:
        red = await agent.allocate("lbl-red", {"labels": {"team": "red"}})
        own = await agent.allocate("lbl-own", {"labels": {"team": "red"}, "egress_address": EGRESS_A})
        plain = await agent.allocate("lbl-none", {"labels": {"team": "blue"}})
        assert (red.egress_address, own.egress_address, plain.egress_address) == (EGRESS_B, EGRESS_A, "")
        guests = [LightGuest.attach(bed, n, name) for n, name in ((red, "r"), (own, "o"), (plain, "n"))]
        assert [client_address(g) for g in guests] == [EGRESS_B, EGRESS_A, UPLINK_IP]
        # a retried allocate (same spec) is the same sandbox, still with the label's address
        assert (await agent.allocate("lbl-red", {"labels": {"team": "red"}})).egress_address == EGRESS_B
    finally:
        await agent.stop()
        for g in guests:
            g.stop()

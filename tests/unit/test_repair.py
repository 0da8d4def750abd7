"""Continuous reconcile, the pure parts: repairs planned from slot facts, and
kernel notices parsed from netlink messages."""
from __future__ import annotations

import struct

from netagent.core.repair import Fix, Repairs, SlotFacts, plan_repairs
from netagent.datapath import kernel_events as ke
from netagent.models import SlotState

A, R = SlotState.ALLOCATED, SlotState.READY


def test_healthy_slots_need_nothing():
    assert not plan_repairs({1: A, 2: R}, {1: SlotFacts(True), 2: SlotFacts(True)})


def test_each_broken_object_gets_its_fix():
    cases = {
        SlotFacts(True, host_veth=False, host_veth_up=False, host_address=False): {Fix.VETH},
        SlotFacts(True, slot_veth=False, slot_veth_up=False, route=False): {Fix.VETH},  # the pair dies whole
        SlotFacts(True, host_veth_up=False): {Fix.HOST_VETH_UP},
        SlotFacts(True, host_address=False): {Fix.HOST_ADDRESS},
        SlotFacts(True, slot_veth_up=False, route=False): {Fix.SLOT_VETH_UP, Fix.ROUTE},
        SlotFacts(True, slot_rules=False): {Fix.SLOT_RULES},
    }
    for facts, want in cases.items():
        assert plan_repairs({1: A}, {1: facts}).fixes == {1: frozenset(want)}, facts


def test_a_lost_tap_is_recreated_in_a_warm_slot_but_only_reported_once_under_a_sandbox():
    lost = SlotFacts(True, tap=False)
    assert plan_repairs({1: R}, {1: lost}) == Repairs({1: frozenset({Fix.TAP})})
    assert plan_repairs({1: A}, {1: lost}) == Repairs({}, tap_lost=(1,))
    assert not plan_repairs({1: A}, {1: lost}, reported_taps=frozenset({1}))


def test_a_missing_netns_quarantines_and_slots_in_other_states_are_left_alone():
    gone = SlotFacts(False)
    assert plan_repairs({1: A, 2: R}, {1: gone, 2: gone}) == Repairs({}, quarantine=(1, 2))
    others = {SlotState.BUILDING, SlotState.DIRTY, SlotState.DESTROYING, SlotState.QUARANTINED}
    assert not plan_repairs(dict(enumerate(others)), {i: gone for i in range(len(others))})


def _msg(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body + b"\0" * (-len(body) % 4)


def test_link_and_address_notices_name_their_interface():
    name = b"nav12\0"
    attr = struct.pack("=HH", 4 + len(name), ke.IFLA_IFNAME) + name + b"\0" * (-len(name) % 4)
    link = _msg(ke.RTM_DELLINK, struct.pack("=BxHiII", 0, 1, 42, 0, 0) + attr)
    addr = _msg(ke.RTM_DELADDR, struct.pack("=BBBBI", 2, 31, 0, 0, 42))
    route = _msg(25, b"\0" * 12)
    assert ke.parse(link + addr + route, None, True) == [
        ke.Notice(None, "nav12", 42), ke.Notice(None, None, 42), ke.Notice(None)]
    assert ke.parse(_msg(0x0A00, b"\0" * 4), 7, False) == [ke.Notice(7, rtnetlink=False)]


async def test_a_slot_repair_that_raises_is_counted_and_exported_as_a_failure():
    from netagent.core.self_repair import RepairWork, SelfRepair
    from netagent.metrics import Metrics

    async def gather(slots):  # type: ignore[no-untyped-def]
        return {i: SlotFacts(True, host_veth_up=False) for i in slots}

    async def repair(idx, fixes):  # type: ignore[no-untyped-def]
        raise OSError("link busy")

    async def nothing(*_):  # type: ignore[no-untyped-def]
        return []
    repairer = SelfRepair("na", lambda: {1: A, 2: R}, RepairWork(gather, repair, nothing, nothing), 2)
    repairer._remap = False
    await repairer.check([1, 2])
    assert repairer.failures == 2
    metrics = Metrics()
    metrics.watch_repair_failures(lambda: repairer.failures)
    assert metrics.registry.get_sample_value("netagent_slot_repair_failures_total") == 2

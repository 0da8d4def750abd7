"""Sticky egress addresses in the pure core: validation at the boundary, the
planner's element swap and its flush of only the sandbox's own flows."""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from netagent.core import ops
from netagent.core.planner import allocation_elements, plan
from netagent.core.rows import Change, EgressSet
from netagent.errors import InvalidArgument
from netagent.firewall import elements as el
from netagent.firewall import names
from tests.unit.test_core import ADDR, CTX, apply, inventory

CONFIGURED = [IPv4Address("198.51.100.3"), IPv4Address("198.51.100.4")]


def allocate(inv, sid: str, slot: int, address: str | None) -> None:
    op = ops.Allocate.of(sid, {"egress_address": address} if address else None, CONFIGURED)
    apply(inv, ops.Allocate(**{**op.__dict__, "slot": slot, "at": 1.0}))


def test_only_a_configured_address_is_accepted():
    with pytest.raises(InvalidArgument, match="not one of this host's egress_addresses"):
        ops.Allocate.of("a", {"egress_address": "198.51.100.9"}, CONFIGURED)
    with pytest.raises(InvalidArgument):
        ops.Allocate.of("a", {"egress_address": "nope"}, CONFIGURED)
    with pytest.raises(InvalidArgument, match="none configured"):
        ops.SetEgressAddress.of("a", "198.51.100.3", [])
    with pytest.raises(InvalidArgument):
        ops.SetEgressAddress.of("a", "300.1.1.1", CONFIGURED)
    assert ops.SetEgressAddress.of("a", "", CONFIGURED).address is None


def test_allocate_adds_the_snat_element_and_release_removes_it():
    inv = inventory()
    allocate(inv, "a", 0, "198.51.100.3")
    snat = el.Element(names.EGRESS_SNAT, "10.12.0.1", "198.51.100.3")
    assert inv.allocations["a"].egress_address == "198.51.100.3"
    assert snat in allocation_elements(ADDR.slot(0), inv.allocations["a"])
    release = plan(inv, ops.Release.of("a"), CTX)
    assert snat in {o.element for o in release.nft if o.verb == "delete"}


def test_a_change_swaps_the_element_and_flushes_only_that_sandbox():
    inv = inventory()
    allocate(inv, "a", 0, "198.51.100.3")
    allocate(inv, "b", 1, None)
    change = apply(inv, ops.SetEgressAddress.of("a", "198.51.100.4", CONFIGURED))
    assert change.rows == (EgressSet("a", "198.51.100.4"),) and change.flush_marks == (ADDR.slot(0).ct_mark,)
    assert [(o.verb, o.element.value) for o in change.nft if o.verb == "delete" or o.element.value] == [
        ("add", "198.51.100.3"), ("delete", "198.51.100.3"), ("add", "198.51.100.4")]
    assert change.reply.egress_address == "198.51.100.4" and inv.allocations["b"].egress_address is None
    same = plan(inv, ops.SetEgressAddress.of("a", "198.51.100.4", CONFIGURED), CTX)
    assert same == Change(reply=same.reply)   # idempotent: nothing to do
    back = plan(inv, ops.SetEgressAddress.of("a", "", CONFIGURED), CTX)
    assert [o.verb for o in back.nft] == ["add", "delete"] and back.reply.egress_address == ""


# ---- bandwidth limits (the same shape: a typed op, rows, work after the commit) ----

def test_limits_are_validated_stored_and_always_reapplied():
    from netagent.core.rows import LimitsSet
    from netagent.models import Limits
    with pytest.raises(InvalidArgument):
        ops.SetLimits.of("a", {"egress_bps": 1})
    with pytest.raises(InvalidArgument):
        ops.Allocate.of("a", {"limits": {"burst_bytes": 10}})
    inv = inventory()
    limits = Limits(egress_bps=10_000_000)
    op = ops.Allocate.of("a", {"limits": limits.model_dump()})
    change = apply(inv, ops.Allocate(**{**op.__dict__, "slot": 0, "at": 1.0}))
    assert change.shape == ((0, limits),) and inv.allocations["a"].limits == limits
    assert apply(inv, ops.Allocate(**{**ops.Allocate.of("b").__dict__, "slot": 1, "at": 1.0})).shape == ()
    new = apply(inv, ops.SetLimits.of("a", {"ingress_bps": 8_000}))
    assert new.rows == (LimitsSet("a", Limits(ingress_bps=8_000)),) and new.shape == ((0, Limits(ingress_bps=8_000)),)
    again = plan(inv, ops.SetLimits.of("a", {"ingress_bps": 8_000}), CTX)
    assert again.rows == () and again.shape == new.shape   # a retry sets the qdiscs again

"""Egress address by label (issue #14 item 4): the config maps "key=value"
to one of egress_addresses, checked once when the config loads; an allocate
whose labels select one gets it as its SNAT source unless it names its own."""
from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from pydantic import ValidationError

from netagent.api import convert
from netagent.api import netagent_pb2 as pb
from netagent.config import Config
from netagent.core import ops
from netagent.errors import InvalidArgument
from netagent.firewall import elements as el
from netagent.firewall import names
from tests.unit.test_core import apply, inventory

A, B = IPv4Address("198.51.100.3"), IPv4Address("198.51.100.4")
CONFIGURED = [A, B]
BY_LABEL = {"team=red": A, "team=blue": B, "tier=gold": B, "billing=red": A}


def op_for(labels: dict[str, str], address: str | None = None, slot: int = 0) -> ops.Allocate:
    spec = {"labels": labels, **({"egress_address": address} if address else {})}
    op = ops.Allocate.of("s", spec, CONFIGURED, BY_LABEL)
    return ops.Allocate(**{**op.__dict__, "slot": slot, "at": 1.0})


def test_the_config_takes_only_key_value_selectors_of_configured_addresses():
    config = Config(egress_addresses=CONFIGURED, egress_by_label={"team=red": "198.51.100.3"})
    assert config.egress_by_label == {"team=red": A}
    for bad in ({"team": "198.51.100.3"}, {"=red": "198.51.100.3"}, {"team=": "198.51.100.3"},
                {"bad key!=x": "198.51.100.3"}, {"team=red": "198.51.100.9"}, {"team=red": "nope"}):
        with pytest.raises(ValidationError, match="egress_by_label"):
            Config(egress_addresses=CONFIGURED, egress_by_label=bad)


def test_a_label_selects_the_address_and_an_explicit_one_wins():
    assert op_for({"team": "red"}).egress_address == A
    assert op_for({"team": "blue", "tier": "gold"}).egress_address == B     # two selectors, one address
    assert op_for({"team": "green"}).egress_address is None                # no selector: the uplink's
    assert op_for({}).egress_address is None
    assert op_for({"team": "red"}, "198.51.100.4").egress_address == B      # the sandbox's own choice


def test_labels_selecting_two_addresses_are_refused():
    with pytest.raises(InvalidArgument, match="team=red, tier=gold select different egress addresses"):
        op_for({"team": "red", "tier": "gold"})


def test_the_planner_gives_the_labelled_sandbox_its_snat_element():
    inv = inventory()
    change = apply(inv, op_for({"team": "blue"}))
    assert change.reply.egress_address == str(B) and inv.allocations["s"].egress_address == str(B)
    snat = el.Element(names.EGRESS_SNAT, "10.12.0.1", str(B))
    assert snat in {o.element for o in change.nft if o.verb == "add"}


def test_the_grpc_allocate_resolves_the_labels_address_too():
    request = pb.AllocateRequest(sandbox_id="s", labels={"team": "blue"})
    assert convert.allocate_op(request, CONFIGURED, BY_LABEL).egress_address == B

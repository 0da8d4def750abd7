"""Policy entries: parsing, validation, normalisation, narrowing. No root."""
from __future__ import annotations

import ipaddress

import pytest

from netagent.addressing import AddressPlan
from netagent.config import Config
from netagent.errors import InvalidArgument
from netagent.firewall import elements as el
from netagent.models import EgressPolicy
from netagent.policy import MAX_ENTRIES, NetPort, compile_policy, narrows, parse_entry

N = ipaddress.IPv4Network


@pytest.mark.parametrize("entry,expected", [
    ("203.0.113.0/24", NetPort(N("203.0.113.0/24"))),
    ("203.0.113.7", NetPort(N("203.0.113.7/32"))),
    ("203.0.113.7:443", NetPort(N("203.0.113.7/32"), 443)),
    ("203.0.113.0/24:53", NetPort(N("203.0.113.0/24"), 53)),
    (":25", NetPort(N("0.0.0.0/0"), 25)),
    ("Allowed.Test", "allowed.test"),
    ("*.cdn.test", "*.cdn.test"),
])
def test_entry_forms(entry, expected):
    assert parse_entry(entry, "x") == expected


@pytest.mark.parametrize("entry", ["", "203.0.113.0/33", "203.0.113.1/24", "1.2.3.4:0", "1.2.3.4:70000",
                                   "1.2.3.4:http", "::1", "exa mple.com", "-bad.test", "*.", "300.1.1.1"])
def test_malformed_entries_are_refused(entry):
    with pytest.raises(InvalidArgument):
        parse_entry(entry, "allow_out[0]")


def test_whole_policy_is_refused_for_one_bad_entry_and_limits_hold():
    with pytest.raises(InvalidArgument, match=r"allow_out\[1\]"):
        compile_policy(EgressPolicy(allow_out=("203.0.113.0/24", "nope/8")))
    with pytest.raises(InvalidArgument, match="domains are allow-only"):
        compile_policy(EgressPolicy(deny_out=("bad.test",)))
    with pytest.raises(InvalidArgument, match="limit"):
        compile_policy(EgressPolicy(allow_out=tuple(f"203.0.113.{i % 250}" for i in range(MAX_ENTRIES + 1))))


def test_overlaps_collapse_per_port_and_defaults_apply():
    c = compile_policy(EgressPolicy(allow_out=("203.0.113.0/24", "203.0.113.9", "203.0.113.9:443")))
    assert c.allow == (NetPort(N("203.0.113.0/24")), NetPort(N("203.0.113.9/32"), 443))
    assert compile_policy(EgressPolicy(), default_internet=False).internet is False
    assert compile_policy(EgressPolicy(internet=True), default_internet=False).internet is True


def test_narrowing():
    base = compile_policy(EgressPolicy(internet=True, allow_out=("203.0.113.0/24",)))
    assert not narrows(base, compile_policy(EgressPolicy(internet=True, allow_out=("203.0.113.0/24", "192.0.2.1"))))
    assert narrows(base, compile_policy(EgressPolicy(internet=False, allow_out=("203.0.113.0/24",))))
    assert narrows(base, compile_policy(EgressPolicy(internet=True)))
    assert narrows(base, compile_policy(EgressPolicy(internet=True, allow_out=("203.0.113.0/24",),
                                                     deny_out=("198.51.100.0/24",))))


def test_policy_elements_render_for_nft():
    slot = AddressPlan(Config(state_dir="/tmp/unused")).slot(2)
    c = compile_policy(EgressPolicy(internet=False, allow_out=("203.0.113.0/24", "203.0.113.7:443"),
                                    deny_out=(":25",)))
    elements = el.policy_elements(slot, c)
    names = [e.set for e in elements]
    assert names == ["egress_blocked", "allow_net", "allow_port", "allow_port", "deny_port", "deny_port"]
    doc = el.to_json("na", el.add(elements))["nftables"]
    assert doc[1]["add"]["element"]["elem"] == [
        {"concat": ["10.12.0.5", {"prefix": {"addr": "203.0.113.0", "len": 24}}]}]
    assert {"concat": ["10.12.0.5", "203.0.113.7", "tcp", 443]} in doc[2]["add"]["element"]["elem"]

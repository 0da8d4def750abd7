"""The firewall driver's pure parts: set names against rules/netagent.nft, the
in-memory fake's transaction semantics, and listings parsed back to elements."""
from __future__ import annotations

import re

import pytest

from netagent.errors import Unavailable
from netagent.firewall import elements as el
from netagent.firewall import names, ruleset
from netagent.firewall.fake import FakeFirewall


def declared() -> dict[str, str]:
    """name -> "set"|"map" for every set and map declared in rules/netagent.nft."""
    text = ruleset.read_rules(ruleset.HOST_RULES)
    return {m.group(2): m.group(1) for m in re.finditer(r"^\s*(set|map) ([a-z_]+) \{", text, re.M)}


def test_every_name_the_agent_fills_is_declared_in_the_rules_file_with_its_kind():
    rules = declared()
    for name in names.ALL:
        assert name in rules, f"{name} is not declared in rules/netagent.nft"
        assert rules[name] == ("map" if name in names.MAPS else "set"), name
    # and nothing the rules reference by @name is missing from the constants
    text = ruleset.read_rules(ruleset.HOST_RULES)
    dynamic = {"conn_count", "conn_rate", "deny_log_rate", "dns_rate"}  # filled by the kernel itself
    assert {m for m in re.findall(r"@([a-z_]+)", text)} - dynamic <= set(names.ALL)


def test_no_verdict_map_holds_jumps_to_validate_at_each_commit():
    """An element with a jump verdict makes the kernel validate the whole table
    at commit (O(elements)); the egress mode is two plain sets instead."""
    text = ruleset.read_rules(ruleset.HOST_RULES)
    assert not re.search(r"type [a-z_. ]+: verdict", text)
    for mode, chain in ((names.EGRESS_OPEN, "mode_open"), (names.EGRESS_BLOCKED, "mode_blocked")):
        assert re.search(rf"^\s*chain {chain} \{{", text, re.M), chain
        assert len(re.findall(rf"ip saddr @{mode} jump {chain}$", text, re.M)) == 3, mode


def loaded() -> FakeFirewall:
    fw = FakeFirewall("na")
    fw.reload("table inet na {}", [el.Element(names.UPLINKS, "up0")], [])
    return fw


def test_fake_transaction_is_all_or_nothing():
    fw = loaded()
    good = el.Element(names.SBX_IFACES, "nav1")
    missing = el.Element(names.SBX_IFACES, "nav2")
    with pytest.raises(Unavailable, match="no element"):
        fw.apply([el.Op("add", good), el.Op("delete", missing)])
    assert not fw.has(good)
    fw.apply(el.add([good]) + el.add([good]))   # adding twice is fine, as in the kernel
    fw.apply(el.delete([good, missing]))         # idempotent delete never fails
    assert fw.content() == {el.Element(names.UPLINKS, "up0")}


def test_fake_refuses_unknown_sets_and_a_missing_table_and_injected_failures():
    fw = FakeFirewall("na")
    with pytest.raises(Unavailable, match="no table"):
        fw.apply(el.add([el.Element(names.SBX_IFACES, "nav1")]))
    fw = loaded()
    with pytest.raises(Unavailable, match="no set"):
        fw.apply(el.add([el.Element("nonsense", "x")]))
    fw.fail_next = "injected"
    with pytest.raises(Unavailable, match="injected"):
        fw.apply(el.add([el.Element(names.SBX_IFACES, "nav1")]))
    fw.apply(el.add([el.Element(names.SBX_IFACES, "nav1")]))  # only the next one fails


def test_fake_refill_replaces_state_sets_but_keeps_dns_admissions():
    fw = loaded()
    fw.apply(el.add([el.Element(names.SBX_IFACES, "nav1")]))
    fw.admit(names.FQDN_IPS, [(("10.12.0.1", "203.0.113.10"), 30)])
    fw.refill([el.Element(names.UPLINKS, "up1")], [el.Element(names.SBX_IFACES, "nav3")])
    assert fw.content() == {el.Element(names.UPLINKS, "up1"), el.Element(names.SBX_IFACES, "nav3"),
                            el.Element(names.FQDN_IPS, ("10.12.0.1", "203.0.113.10"))}
    assert fw.fingerprint() == ruleset.fingerprint("table inet na {}")
    assert fw.delete_table() and fw.fingerprint() is None and not fw.delete_table()


def test_listed_json_elements_parse_back_to_the_elements_that_were_added():
    for e in (el.Element(names.PORT_DNAT, ("tcp", 20000), ("10.12.0.1", 80)),
              el.Element(names.EGRESS_OPEN, "10.12.0.1"),
              el.Element(names.ALLOW_NET, ("10.12.0.1", "203.0.113.0/24"))):
        item = el.to_json("na", el.add([e]))["nftables"][0]["add"]["element"]["elem"][0]
        assert el.from_json_item(e.set, item) == e
    timed = {"elem": {"val": {"concat": ["10.12.0.1", "203.0.113.10"]}, "timeout": 30, "expires": 29}}
    assert el.from_json_item(names.FQDN_IPS, timed) == el.Element(names.FQDN_IPS, ("10.12.0.1", "203.0.113.10"))
    doc = el.timed_json("na", names.FQDN_IPS, [(("10.12.0.1", "203.0.113.10"), 30)])["nftables"]
    assert [next(iter(c)) for c in doc] == ["add", "delete", "add"]

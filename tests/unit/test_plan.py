"""Pure core: address plan, naming, config, element and ruleset rendering. No root."""
from __future__ import annotations

import ipaddress
import json

import pytest
from pydantic import BaseModel

from netagent import config as config_mod
from netagent.addressing import AddressPlan
from netagent.config import Config
from netagent.errors import ConfigError, InvalidArgument
from netagent.firewall import elements as el
from netagent.firewall import ruleset
from netagent.models import AllocateSpec, validate_port, validate_protocol, validate_sandbox_id


def cfg(**kw) -> Config:
    return Config(state_dir="/tmp/unused", **kw)


def test_slot_index_round_trips_through_names_and_addresses():
    plan = AddressPlan(cfg())
    assert plan.capacity == 32768
    for idx in (0, 1, 77, 32767):
        s = plan.slot(idx)
        assert int(s.sandbox_ip) == int(s.host_ip) + 1 and int(s.host_ip) % 2 == 0
        assert plan.index_of_sandbox_ip(s.sandbox_ip) == idx
        assert plan.index_of_netns(s.netns) == idx
        assert plan.index_of_host_veth(s.host_veth) == idx
        assert len(s.host_veth.encode()) <= 15
    assert str(plan.slot(0).sandbox_ip) == "10.12.0.1" and str(plan.slot(1).host_ip) == "10.12.0.2"
    with pytest.raises(ValueError):
        plan.slot(32768)
    assert plan.index_of_netns("na-007") is None and plan.index_of_netns("other-1") is None
    assert plan.index_of_host_veth("nav99999") is None


def test_capacity_follows_the_cidr_and_names_fit_15_bytes():
    assert AddressPlan(cfg(transit_cidr="10.40.0.0/24")).capacity == 128
    assert AddressPlan(cfg(transit_cidr="10.40.0.0/15")).capacity == 65536
    longest = cfg(prefix="abcdefgh", transit_cidr="10.0.0.0/16")
    assert len(AddressPlan(longest).host_veth(32767)) <= 15
    with pytest.raises(ValueError, match="prefix"):
        cfg(prefix="abcdefghi")


def test_boot_ip_argument():
    plan = AddressPlan(cfg())
    assert plan.boot_ip_arg() == "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"
    assert plan.boot_ip_arg(dns="169.254.0.22").endswith(":off:169.254.0.22")


@pytest.mark.parametrize("field,value", [
    ("prefix", "Bad!"), ("transit_cidr", "10.0.0.0/31"), ("transit_cidr", "10.0.0.0/8"),
    ("host_port_range", [3000, 100]), ("pool_size", -1), ("log_level", "LOUD"), ("nonsense", 1),
])
def test_invalid_config_names_the_field(field, value, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(f"{field} = {json.dumps(value)}\n")
    with pytest.raises(ConfigError) as exc:
        config_mod.load(f, environ={})
    assert field in str(exc.value)


def test_config_env_overrides_and_nested(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('prefix = "ab"\npool_size = 3\n[guest]\nmtu = 1400\n')
    c = config_mod.load(f, environ={"NETAGENT_POOL_SIZE": "9", "NETAGENT_GUEST__MTU": "1300",
                                    "NETAGENT_STATE_DIR": str(tmp_path)})
    assert (c.prefix, c.pool_size, c.guest.mtu) == ("ab", 9, 1300)
    with pytest.raises(ConfigError, match="guest.guest_mac"):
        config_mod.load(None, environ={"NETAGENT_GUEST__GUEST_MAC": "01:00:00:00:00:01"})


def test_input_validation():
    for good in ("a", "sbx-1", "x" * 57, "0abc"):
        assert validate_sandbox_id(good) == good
    for bad in ("", "A", "-a", "a-", "a_b", "a.b", "x" * 58, None, 3):
        with pytest.raises(InvalidArgument):
            validate_sandbox_id(bad)
    for bad in (0, 65536, True, "80", 1.5):
        with pytest.raises(InvalidArgument):
            validate_port(bad)
    assert validate_protocol("TCP").value == "tcp"
    with pytest.raises(InvalidArgument):
        validate_protocol("icmp")
    with pytest.raises(InvalidArgument):
        AllocateSpec.parse({"labels": {"bad key!": "x"}})


def test_element_json_groups_ops_and_deletes_idempotently():
    plan = AddressPlan(cfg())
    s = plan.slot(3)
    ops = el.add([el.egress_element(s, True), el.port_element(s, "tcp", 20001, 8080)])
    doc = el.to_json("na", ops)["nftables"]
    assert doc[0]["add"]["element"] == {"family": "inet", "table": "na", "name": "egress_open", "elem": ["10.12.0.7"]}
    assert doc[1]["add"]["element"]["elem"] == [[{"concat": ["tcp", 20001]}, {"concat": ["10.12.0.7", 8080]}]]
    dele = el.to_json("na", el.delete([el.egress_element(s, False)]))["nftables"]
    assert [list(c)[0] for c in dele] == ["add", "delete"]
    assert dele[1]["delete"]["element"]["elem"] == ["10.12.0.7"]
    assert dele[1]["delete"]["element"]["name"] == "egress_blocked"
    text = el.to_text("na", el.slot_elements(s))
    assert 'add element inet na sbx_src { "nav3" . 10.12.0.7 }' in text
    assert f"add element inet na slot_mark_in {{ 10.12.0.7 : {s.ct_mark_in} }}" in text
    marks = el.to_text("na", el.mark_elements(s, 0))
    assert f"add element inet na live_marks {{ {s.ct_mark}, {s.ct_mark_in} }}" in marks


def test_ruleset_rendering_and_config_elements():
    c = cfg(prefix="zz", always_allow=["10.1.2.0/24"])
    source = ruleset.read_rules(ruleset.HOST_RULES)
    text = ruleset.host_table_text(c, source)
    assert "table inet zz {" in text and "table inet netagent" not in text
    fixed = ruleset.config_elements(c, "eth0", ["198.51.100.2"])
    deny = {e.key for e in fixed if e.set == "always_deny"}
    assert "10.0.0.0/8" in deny and "169.254.0.0/16" in deny and "198.51.100.2" in deny
    assert {e.key for e in fixed if e.set == "always_allow"} == {"10.1.2.0/24"}
    script = ruleset.full_load_script(c, source, fixed, [])
    assert script.startswith("table inet zz {}\ndelete table inet zz\n")
    slot = ruleset.slot_script(c, ruleset.read_rules(ruleset.SLOT_RULES), "10.12.0.2")
    assert "define dns_ip = 10.12.0.2\ndefine dns_port = 10053" in slot
    assert 'define tap = "tap0"' in slot and "define guest_ip = 169.254.0.21" in slot


def test_host_rules_file_names_no_sandbox_address():
    """No sandbox address appears in the file (the real rule count is
    tests/datapath/test_host_rules.py::test_host_ruleset_has_a_fixed_rule_count)."""
    source = ruleset.read_rules(ruleset.HOST_RULES)
    assert not any(ipaddress.IPv4Network("10.12.0.0/16").overlaps(ipaddress.IPv4Network(tok, strict=False))
                   for tok in source.split() if tok.count(".") == 3 and tok[0].isdigit())


def test_example_config_covers_every_field_and_validates():
    from pathlib import Path
    example = Path(__file__).resolve().parents[2] / "netagent/systemd/netagent.toml.example"
    text = example.read_text()
    sections = {name: f.annotation for name, f in Config.model_fields.items()
                if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    missing = [f for f in Config.model_fields if f not in sections
               and f"\n{f} =" not in text and f"\n# {f} =" not in text]
    for name, model in sections.items():
        body = text.split(f"\n[{name}]\n", 1)[1].split("\n[", 1)[0] if f"\n[{name}]\n" in text else ""
        missing += [f"{name}.{f}" for f in model.model_fields if f"\n{f} =" not in "\n" + body
                    and f"\n# {f} =" not in "\n" + body]
    assert not missing, f"netagent.toml.example lacks {missing}"
    config_mod.load(example, environ={})


def test_per_sandbox_caps_from_the_config_land_in_their_own_rules():
    c = cfg(new_conn_rate=7, new_conn_burst=8, dns_query_rate=9, dns_query_burst=10, dns_proxy_port=5353)
    text = ruleset.host_table_text(c, ruleset.read_rules(ruleset.HOST_RULES))
    assert "@conn_rate { ip saddr limit rate over 7/second burst 8 packets }" in text
    assert "@dns_rate { ip saddr limit rate over 9/second burst 10 packets }" in text
    assert "th dport 5353 fib daddr . iif type local jump dns_from_sandbox" in text and "10053" not in text

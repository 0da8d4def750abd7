"""The netlink probes against a real kernel, in a netns each test makes (and
removes): `netagent status`'s table check, and the slot cleaner's element check."""
from __future__ import annotations

from netagent.firewall.element_probe import counters, has_element, ipv4_key
from netagent.firewall.table_probe import table_exists
from netagent.operator.kernel import in_netns
from tests.datapath.helpers import scratch_netns
from tests.testbed import sh


def test_table_exists_sees_only_the_named_inet_table_of_its_netns():
    with scratch_netns("tprobe") as ns:
        path = f"/run/netns/{ns}"
        assert in_netns(path, lambda: table_exists("inet", "na")) is False
        sh.run("nft", "add", "table", "ip", "na", ns=ns)             # same name, another family
        assert in_netns(path, lambda: table_exists("inet", "na")) is False
        sh.run("nft", "add", "table", "inet", "na", ns=ns)
        sh.run("nft", "add", "set", "inet", "na", "s", "{ type ipv4_addr; }", ns=ns)
        sh.run("nft", "add", "element", "inet", "na", "s", "{ 10.0.0.1, 10.0.0.2 }", ns=ns)
        assert in_netns(path, lambda: table_exists("inet", "na")) is True
        assert in_netns(path, lambda: table_exists("inet", "nb")) is False


def test_has_element_finds_exactly_the_keys_of_the_named_set():
    with scratch_netns("eprobe") as ns:
        path = f"/run/netns/{ns}"

        def has(table: str, set_name: str, ip: str) -> bool:
            return in_netns(path, lambda: has_element("inet", table, set_name, ipv4_key(ip) or b""))
        assert has("na", "m", "10.12.0.5") is False                  # no table at all
        sh.run("nft", "add", "table", "inet", "na", ns=ns)
        sh.run("nft", "add", "map", "inet", "na", "m", "{ type ipv4_addr : verdict; }", ns=ns)
        sh.run("nft", "add", "set", "inet", "na", "s", "{ type ipv4_addr; }", ns=ns)
        sh.run("nft", "add", "element", "inet", "na", "m", "{ 10.12.0.5 : accept }", ns=ns)
        sh.run("nft", "add", "element", "inet", "na", "s", "{ 10.12.0.6 }", ns=ns)
        assert has("na", "m", "10.12.0.5") is True
        assert has("na", "m", "10.12.0.6") is False                  # in the other set only
        assert has("na", "s", "10.12.0.6") is True
        assert has("na", "nosuch", "10.12.0.5") is False
        sh.run("nft", "delete", "element", "inet", "na", "m", "{ 10.12.0.5 }", ns=ns)
        assert has("na", "m", "10.12.0.5") is False


def test_counters_reads_the_named_keys_counters_and_leaves_out_absent_ones():
    with scratch_netns("cprobe") as ns:
        sh.run("nft", "add", "table", "inet", "na", ns=ns)
        sh.run("nft", "add", "set", "inet", "na", "s", "{ type ipv4_addr; counter; }", ns=ns)
        sh.run("nft", "add", "element", "inet", "na", "s", "{ 10.12.0.5 counter packets 7 bytes 900, 10.12.0.6 }",
               ns=ns)
        got = in_netns(f"/run/netns/{ns}", lambda: counters("inet", "na", ["s", "gone"],
                                                            ["10.12.0.5", "10.12.0.6", "10.12.0.7"]))
        assert got == {"s": {"10.12.0.5": (7, 900), "10.12.0.6": (0, 0)}, "gone": {}}


def test_counter_objects_read_every_named_counter_of_the_table_only():
    from netagent.firewall.counter_objects import packets
    with scratch_netns("oprobe") as ns:
        path = f"/run/netns/{ns}"
        assert in_netns(path, lambda: packets("inet", "na")) == {}           # no table: none
        sh.run("nft", "add", "table", "inet", "na", ns=ns)
        sh.run("nft", "add", "counter", "inet", "na", "drop_a", "{ packets 7 bytes 700 }", ns=ns)
        sh.run("nft", "add", "counter", "inet", "na", "drop_b", ns=ns)
        sh.run("nft", "add", "quota", "inet", "na", "q", "{ over 1 mbytes }", ns=ns)     # not a counter
        sh.run("nft", "add", "table", "inet", "nb", ns=ns)
        sh.run("nft", "add", "counter", "inet", "nb", "other", "{ packets 3 bytes 30 }", ns=ns)
        assert in_netns(path, lambda: packets("inet", "na")) == {"drop_a": 7, "drop_b": 0}
        assert in_netns(path, lambda: packets("inet", "nb")) == {"other": 3}

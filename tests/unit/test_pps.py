"""Packet-rate limits, the pure parts: the model's bounds, the proto both
ways, and the one transaction rendered from rules/pps.nft."""
from __future__ import annotations

import pytest

from netagent.api import convert
from netagent.api import netagent_pb2 as pb
from netagent.core import ops
from netagent.datapath import pps
from netagent.errors import InvalidArgument
from netagent.firewall.ruleset import read_rules
from netagent.models import Limits

SOURCE = read_rules(pps.RULES)
REPLACE = f"table ip {pps.TABLE} {{}}\ndelete table ip {pps.TABLE}\n"


def rules(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines() if "limit rate over" in line]


def test_packet_rates_make_a_sandbox_limited_and_bad_ones_are_refused():
    assert Limits(egress_pps=1_000).limited and Limits(ingress_pps=10).limited
    assert not Limits(burst_packets=50).limited
    for bad in ({"egress_pps": 9}, {"ingress_pps": 0}, {"egress_pps": 100_000_001}, {"burst_packets": 0},
                {"egress_pps": "many"}, {"egress_pps": 1.5}, {"egress_pkts": 10}):
        with pytest.raises(InvalidArgument):
            ops.SetLimits.of("a", bad)
        with pytest.raises(InvalidArgument):
            ops.Allocate.of("a", {"limits": bad})


def test_default_burst_is_a_tenth_of_a_second_at_least_ten_packets():
    assert [pps.default_burst(r) for r in (10, 99, 100, 1_000, 50_000)] == [10, 10, 10, 100, 5_000]
    assert pps.burst_of(Limits(egress_pps=1_000, burst_packets=7), 1_000) == 7


def test_proto_carries_packet_rates_both_ways():
    limits = Limits(egress_bps=8_000, egress_pps=1_000, ingress_pps=2_000, burst_packets=30)
    message = convert.limits_to_proto(limits)
    assert (message.egress_pps, message.ingress_pps, message.burst_packets) == (1_000, 2_000, 30)
    assert Limits(**convert.limits_from_proto(message)) == limits
    assert convert.limits_from_proto(pb.Limits()) == {name: None for name in Limits.model_fields}  # 0: unlimited
    with pytest.raises(InvalidArgument):
        convert.set_limits_op(pb.SetLimitsRequest(sandbox_id="a", limits=pb.Limits(ingress_pps=5)))


def test_unlimited_only_deletes_the_table():
    assert pps.table_script(SOURCE, "tap0", Limits()) == REPLACE
    assert pps.table_script(SOURCE, "tap0", Limits(egress_bps=8_000, burst_packets=5)) == REPLACE


def test_each_direction_gets_its_rate_and_burst_and_only_its_rule():
    both = pps.table_script(SOURCE, "tapx", Limits(egress_pps=1_000, ingress_pps=40, burst_packets=7))
    assert both.startswith(REPLACE + 'define tap = "tapx"\n')
    assert rules(both) == [
        'iifname $tap limit rate over 1000/second burst 7 packets counter name egress_dropped drop',
        'oifname $tap limit rate over 40/second burst 7 packets counter name ingress_dropped drop']
    assert rules(pps.table_script(SOURCE, "tap0", Limits(ingress_pps=300))) == [
        'oifname $tap limit rate over 300/second burst 30 packets counter name ingress_dropped drop']
    assert rules(pps.table_script(SOURCE, "tap0", Limits(egress_pps=20_000))) == [
        'iifname $tap limit rate over 20000/second burst 2000 packets counter name egress_dropped drop']


def test_a_template_without_its_rules_is_refused():
    with pytest.raises(ValueError, match="iifname"):
        pps.table_script(SOURCE.replace("iifname", "meta iifname"), "tap0", Limits(egress_pps=100))

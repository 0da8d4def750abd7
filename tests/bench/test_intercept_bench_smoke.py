"""The interception bench's pure part: per-round ratios between its three states."""
from __future__ import annotations

from tests.bench.intercept_bench import _ratios


def test_ratios_pair_each_round_and_report_the_median_and_spread():
    runs = {"none": [100.0, 200.0, 100.0], "nat_chain": [90.0, 200.0, 50.0], "rule": [90.0, 100.0, 50.0]}
    out = _ratios(runs)
    assert out["rule_vs_nat_chain"] == {"median": 1.0, "min": 0.5, "max": 1.0}
    assert out["rule_vs_none"] == {"median": 0.5, "min": 0.5, "max": 0.9}
    assert out["nat_chain_vs_none"] == {"median": 0.9, "min": 0.5, "max": 1.0}

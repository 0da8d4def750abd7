"""Smoke test for tests/bench/reach_bench.py: a very short throughput run (2
target namespaces, 0.5 s per part), so the bench code cannot rot."""
import os

import pytest

from tests.testbed import sh

from .reach_bench import throughput


def test_reach_bench_throughput_smoke():
    if os.geteuid() != 0:
        pytest.fail("the reachability bench needs root (namespaces, raw sockets)", pytrace=False)
    before = {n for n in sh.netns_list() if n.startswith("rb")}
    out = throughput(seconds=0.5, targets=2, inflight=64, entries=100)
    assert {n for n in sh.netns_list() if n.startswith("rb")} <= before, "the bench left namespaces behind"

    syn = out["syn_prober"]
    assert syn["probes"] > 100 and syn["timeouts"] == 0 and syn["errors"] == 0, syn
    assert set(syn["outcomes"]) == {"syn-ack", "rst"}, syn
    for name in ("prober_loop", "prober_loop_saturated"):
        loop = out[name]
        assert loop["probes"] > 100 and loop["timeouts"] == 0 and loop["errors"] == 0, loop
        assert loop["reachable_ports"] == 2 * 8, loop      # 8 listening ports per target
    base = out["asyncio_connect_baseline"]
    assert base["probes"] > 10 and base["timeouts"] == 0 and set(base["outcomes"]) == {"open", "refused"}, base
    assert out["ratio_syn_prober_over_asyncio"] > 0

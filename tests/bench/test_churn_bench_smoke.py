"""Smoke test for tests/bench/churn_bench.py: 3 live sandboxes, 5 cycles/s for
3 s, traced, so the bench code and its latency tracer cannot rot (the figures
themselves are `make bench`'s)."""
import os
import tempfile
from pathlib import Path

import pytest

from tests.testbed import bed as testbed

from .churn_bench import run


def test_churn_bench_smoke():
    if os.geteuid() != 0:
        pytest.fail("the churn bench needs root (namespaces)", pytrace=False)
    bed = testbed.Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = run(bed, Path(tmp), existing=3, rate=5, seconds=3, window=1.5, pool_size=4,
                      trace=Path(tmp) / "trace.jsonl")
    finally:
        bed.destroy()
    whole = out["whole_run"]
    # a loaded host may miss cycles (counted); every cycle run had its flow open at release
    assert whole["cycles"] + out["cycles_missed"] == 15 and whole["flows_ok"] == whole["cycles"] > 0, out
    # windows of 1.5 s cover every cycle run
    assert len(out["per_window"]) >= 2 and sum(w["cycles"] for w in out["per_window"]) == whole["cycles"], out
    assert out["cleanup_kernel_cpu"]["cleaner_thread_found"], out
    assert whole["netns"]["min"] >= 3 and whole["agent_cpu_cores"] > 0 and out["rss_mb"]["start"] > 0, out
    # the latency trace saw every churn allocate, each with its commit's phases
    assert out["trace"]["allocates"] == whole["cycles"], out["trace"]
    assert set(out["trace"]["phases_ms"]) >= {"handler", "queue", "plan", "nft", "db", "after", "reply"}, out["trace"]
    assert set(out["meets_target"]) >= {"allocate_p99_le_5ms_every_window", "pool_never_empty", "netns_stable",
                                        "conntrack_stable", "rss_growth_le_10MB"}, out

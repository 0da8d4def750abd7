"""Smoke test for tests/bench/cli_bench.py: one run of each case against an
agent with 3 sandboxes, so the bench code cannot rot (the figures are
`make bench`'s; nothing here is timed)."""
import os

import pytest

from .cli_bench import TARGETS_MS, run


def test_cli_bench_smoke():
    if os.geteuid() != 0:
        pytest.fail("the CLI bench needs root (a test bed agent)", pytrace=False)
    out = run(1, 3)
    assert out["sandboxes"] == 3 and out["runs"] == 1, out
    for name in TARGETS_MS:
        assert out["after"][name]["median_ms"] > 0 and "meets_target" in out["after"][name], out
        assert out["after"][name]["failures"] == [], out
    assert out["after"]["python_startup"]["median_ms"] > 0, out
    assert out["after"]["ls_json"]["cpu_median_ms"] > 0 and out["loadavg_1m"]["median"] >= 0, out

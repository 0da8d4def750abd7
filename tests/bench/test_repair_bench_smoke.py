"""Smoke test for tests/bench/repair_bench.py: 3 slots, 1 s windows, so the
bench code cannot rot (the figures themselves are `make bench`'s)."""
import asyncio
import os
import tempfile
from pathlib import Path

import pytest

from tests.testbed import bed as testbed

from .repair_bench import run


def test_repair_bench_smoke():
    if os.geteuid() != 0:
        pytest.fail("the repair bench needs root (namespaces)", pytrace=False)
    bed = testbed.Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = asyncio.run(run(bed, 3, 1.0, Path(tmp) / "state"))
    finally:
        bed.destroy()
    assert out["slots"] == 3 and out["full_pass"]["repairs"] == 0, out
    assert out["one_slot_repair_ms"] > 0 and out["steady_pass_cpu_ms"] >= 0, out
    assert set(out["idle_cpu_core_share"]) == {"self_repair_on", "self_repair_off", "difference"}, out

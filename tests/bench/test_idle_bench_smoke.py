"""Smoke test for tests/bench/idle_bench.py: 3 sandboxes over gRPC, two 1 s
windows, so the bench code cannot rot (the figures themselves are `make bench`'s)."""
import os
import tempfile
from pathlib import Path

import pytest

from tests.testbed import bed as testbed

from .idle_bench import headline, run


def test_idle_bench_smoke():
    if os.geteuid() != 0:
        pytest.fail("the idle bench needs root (namespaces)", pytrace=False)
    bed = testbed.Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = run(bed, Path(tmp), sandboxes=3, from_s=0.5, width=1.0, count=2)
    finally:
        bed.destroy()
    assert out["sandboxes"] == 3 and out["self_repair"] is True, out
    assert [w["to_s"] > w["from_s"] >= 0.5 for w in out["windows"]] == [True, True], out
    assert out["worst_window_cpu_cores"] == max(w["cpu_cores"] for w in out["windows"]) >= 0, out
    assert "after" in headline({"after": out})

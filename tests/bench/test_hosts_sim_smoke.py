"""Smoke test for tests/bench/hosts_sim.py: 4 hosts in 2 processes, 5 sandboxes
each, 2 s per configuration, so the simulation code cannot rot."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_hosts_sim_smoke() -> None:
    out = subprocess.run([sys.executable, "-m", "tests.bench.hosts_sim", "--hosts", "4", "--procs", "2",
                          "--sandboxes", "5", "--churn", "4", "--seconds", "2"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)
    assert set(res["configs"]) == {f"{c}, {d}" for c in ("base", "2x sandboxes", "2x churn")
                                   for d in ("heartbeat", "liveness")}
    for name, r in res["configs"].items():
        assert r["publisher_errors"] == 0, (name, r)
        assert r["changes"] >= 4 * 2 * 2, (name, r)          # hosts x churn x seconds, at least half
        assert r["change_to_edge_ms"]["n"] > 0 and r["redis_commands_per_s"] > 0, (name, r)
        # every live record is in the new edge's snapshot: sandboxes per host x hosts, plus one
        # per host whose churn stopped after an allocation
        assert 4 * r["sandboxes_per_host"] <= r["edge_full_sync_records"] <= 4 * (r["sandboxes_per_host"] + 1), r
    assert "change->edge" in out.stderr

"""Smoke test for tests/bench/haproxy_bench.py: a short propagation run (200 records,
5 samples, SQLite) so the bench code cannot rot; the figures are make bench's job."""
from .haproxy_bench import propagation


async def test_haproxy_bench_propagation_smoke(tmp_path):
    out = await propagation(f"sqlite:///{tmp_path}/registry.db", records=200, samples=5, workdir=tmp_path)
    assert out["records"] == 200 and out["samples"] == 5
    assert 0 < out["p50_ms"] <= out["p99_ms"] and out["full_sync_s"] > 0

"""Smoke test for tests/bench/grpc_server_ab.py: one round of every variant
with a few calls, so the bench code cannot rot (the figures are the bench's;
nothing here is timed)."""
import asyncio

from .grpc_server_ab import VARIANTS, ab


def test_grpc_server_ab_smoke(bed, tmp_path):
    out = asyncio.run(ab(bed, tmp_path, 2, 1, 3, 4, list(VARIANTS)))
    for side in ("in_process", *VARIANTS):
        assert out["warm_allocate_ms"][side]["n"] == 3, out
        assert out["concurrent_total_ms"][side]["n"] == 1 and out["concurrent_total_ms"][side]["p50"] > 0, out
    assert set(out["added_p50_ms"]) == set(VARIANTS), out

"""Smoke test for tests/bench/edge_reload_bench.py: 300 records, one reload and one
restart, a 2.5 s write-cost run, so the bench code cannot rot; the figures are make bench's."""
from .edge_reload_bench import run


async def test_edge_reload_bench_smoke() -> None:
    out = await run(records=300, rate=200, seconds=2.5, rounds=1)
    for how in ("reload", "restart"):
        figures = out["new_process"][how]
        assert 0 < figures["admin_answers_s"] <= figures["known_routes_s"] and figures["synced_s"] > 0
    assert out["map_files"]["bytes_per_s"] > 0 and out["map_files"]["files_per_s"] > 0

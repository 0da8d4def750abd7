"""Smoke test for tests/bench/edge_bench.py (the edge against the DNATed port, in the
test bed): one short run so the bench code cannot rot; the figures are make bench's."""
from .edge_bench import run


async def test_edge_bench_smoke() -> None:
    out = await run(seconds=1.0, connections=2, rounds=1)
    for path in ("dnat", "edge_http", "edge_h2", "edge_h2_front"):
        assert out[path]["serial"]["requests"] > 0 and out[path]["concurrent"]["not_200"] == 0
    assert "added_p50_ms" in out["edge_h2_over_dnat"] and out["front_over_edge_h2"]["rounds"] == 1

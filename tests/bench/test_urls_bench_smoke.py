"""Smoke test for tests/bench/urls_bench.py: a short run so the bench code cannot
rot; the figures are make bench's job."""
from .urls_bench import just_opened


async def test_urls_bench_just_opened_smoke(tmp_path):
    out = await just_opened(requests=10, workdir=tmp_path)
    assert out["requests"] == 10 and sum(out["statuses"].values()) == 10
    assert out["false_502"] == 0

"""Smoke test for tests/bench/urls_bench.py: a short run so the bench code cannot
rot; the figures are make bench's job."""
from .urls_bench import just_opened, tcp_path, wake


async def test_urls_bench_just_opened_smoke(tmp_path):
    out = await just_opened(requests=10, workdir=tmp_path)
    assert out["requests"] == 10 and sum(out["statuses"].values()) == 10
    assert out["false_502"] == 0


async def test_urls_bench_wake_smoke(tmp_path):
    out = await wake(samples=3, workdir=tmp_path)
    assert out["samples"] == 3 and out["hook_calls"] == 3
    assert 0 < out["live_to_first_byte_ms"]["p50"] <= out["hook_call_to_first_byte_ms"]["p50"]


async def test_urls_bench_tcp_smoke(tmp_path):
    out = await tcp_path(tmp_path, seconds=1, connects=5, rounds=1)
    for way in ("direct", "listener", "front443"):
        assert out[way]["mbytes_per_s"] > 0 and out[way]["connect_ms"]["n"] == 5

"""Smoke test for tests/bench/first_payload_bench.py: a few flows, short
windows, so the bench code cannot rot (the figures themselves are `make bench`'s)."""
import asyncio
import os

import pytest

from .first_payload_bench import run


def test_first_payload_bench_smoke():
    if os.geteuid() != 0:
        pytest.fail("the first-payload bench needs root (namespaces)", pytrace=False)
    out = asyncio.run(run(flows=20, seconds=0.3, runs=1))
    assert set(out["first_byte_ms"]) == {"plain", "nfqueue", "tproxy"}, out
    assert all(v > 0 for v in out["bulk_gbps"].values()), out
    # the checked sandbox's flows went through the queue: each ClientHello (20 new flows and
    # the bulk flow), not the handshake's bare ACK, which the kernel passes
    assert 20 + 1 <= out["packets_queued_for_the_checked_sandbox"] < 2 * 20, out
    assert isinstance(out["meets_target"], bool)

"""Resolver flood benchmark: one sandbox sends 10,000 queries at once while two
others ask every 5 ms; the others' p99 quiet and during the flood, with the
per-sandbox kernel cap (dns_query_rate, the default) and, as the same run's
baseline, with the cap lifted. Target (docs/performance.md, "Gateway
resolver"): the others' p99 during the flood stays under 5 ms, no query lost.

  python -m tests.bench.dns_flood_bench
"""
from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from netagent.agent import Agent
from netagent.config import Config
from tests.testbed.bed import DNS_IP, Testbed
from tests.testbed.dns_flood import FLOOD_QUERIES, probe_others

TARGET_P99_MS = 5.0


async def one_case(capped: bool) -> dict:
    bed = Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            extra = {} if capped else {"dns_query_rate": 1_000_000, "dns_query_burst": 100_000}
            agent = Agent(Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=Path(tmp),
                                 pool_size=3, dns_upstreams=[DNS_IP], dns_ttl_floor_s=5, **extra))
            await agent.start()
            try:
                nets = [await agent.allocate(f"flood-{i}") for i in range(3)]
                await agent.wait_pool_ready()
                quiet, _ = await probe_others(bed, agent, nets[0], nets[1:], during_flood=False)
                loud, flood = await probe_others(bed, agent, nets[0], nets[1:], during_flood=True)
            finally:
                await agent.stop()
    finally:
        bed.destroy()
    worst = max(r["p99_ms"] for r in loud)
    lost = sum(r["lost"] for r in loud)
    return {"quiet_p99_ms": [r["p99_ms"] for r in quiet], "flood_p99_ms": [r["p99_ms"] for r in loud],
            "others_lost": lost, "flood_answered": flood and flood.get("answered"),
            "meets_target": worst < TARGET_P99_MS and lost == 0}


async def run() -> dict:
    return {"flood_queries": FLOOD_QUERIES, "target_p99_ms": TARGET_P99_MS,
            "kernel_cap": await one_case(capped=True), "no_cap_baseline": await one_case(capped=False)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run()), indent=2))

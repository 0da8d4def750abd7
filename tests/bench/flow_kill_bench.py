"""Narrowing UpdatePolicy with walk-free flow kills (#15), next to the walk it replaced.

Same agent, same sandbox, same run: `live_mark` is UpdatePolicy as it is (the
old egress mark leaves live_marks in the policy's transaction); `with_walk` is
UpdatePolicy followed by the conntrack flush by mark the call used to await
(one walk of the whole hash). `walk_ms` is that flush alone. Prints JSON.

    python -m tests.bench.flow_kill_bench [--existing 200] [--samples 100]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from netagent.agent import Agent
from netagent.config import Config
from netagent.datapath import conntrack
from tests.bench.run import fill, settle, summary
from tests.testbed.bed import Testbed

NARROW = {"internet": False, "allow_out": ["203.0.113.0/24"]}
WIDE = {"internet": False, "allow_out": ["203.0.113.0/24", "198.51.100.7:443"]}


async def narrowings(agent: Agent, sid: str, samples: int, walk: bool) -> list[float]:
    out = []
    for _ in range(samples):
        await agent.update_policy(sid, WIDE)
        old = agent.plan.slot(agent.allocations[sid].slot).egress_mark(agent.allocations[sid].mark_generation)
        t0 = time.perf_counter()
        await agent.update_policy(sid, NARROW)
        if walk:
            await agent.cleaner.call(conntrack.flush_mark, old)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


async def bench(bed: Testbed, existing: int, samples: int, state: Path) -> dict:
    agent = Agent(Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=state,
                         pool_size=existing + 4, pool_build_concurrency=2))
    await agent.start()
    try:
        await agent.wait_pool_ready(timeout=900)
        await fill(agent, existing)
        await settle(agent)
        sid = next(iter(agent.allocations))
        out: dict = {"existing": existing, "samples": samples}
        # Interleaved halves, so drift on this shared machine hits both alike.
        live, walked = [], []
        for _ in range(2):
            live += await narrowings(agent, sid, samples // 2, walk=False)
            walked += await narrowings(agent, sid, samples // 2, walk=True)
        out["narrowing_ms"] = {"live_mark": summary(live), "with_walk": summary(walked)}
        walks = []
        for _ in range(20):
            t0 = time.perf_counter()
            await agent.cleaner.call(conntrack.flush_mark, 0x7E7E7E7E)   # a mark nobody uses: a pure walk
            walks.append((time.perf_counter() - t0) * 1e3)
        out["walk_ms"] = summary(walks)
        out["targets"] = {f"narrowing_p99_at_N={existing}_le_5ms": out["narrowing_ms"]["live_mark"]["p99"] <= 5}
        return out
    finally:
        await agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--existing", type=int, default=200)
    ap.add_argument("--samples", type=int, default=100)
    args = ap.parse_args()
    bed = Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(asyncio.run(bench(bed, args.existing, args.samples, Path(tmp))), indent=2))
    finally:
        bed.destroy()


if __name__ == "__main__":
    main()

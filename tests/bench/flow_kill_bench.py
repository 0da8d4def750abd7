"""Narrowing UpdatePolicy with walk-free flow kills (#15), next to the walk it replaced.

Same agent, same sandbox, same run: `live_mark` is UpdatePolicy as it is (the
old egress mark leaves live_marks in the policy's transaction); `with_walk` is
UpdatePolicy followed by the conntrack flush by mark the call used to await
(one walk of the whole hash). `walk_ms` is that flush alone. Prints JSON.
`live_mark_by_driver`: the same narrowing with each firewall driver on the
host thread (config `firewall_driver`; netlink-host: its batch sent from the
host thread, not the loop), rounds interleaved (A/B in one run).

    python -m tests.bench.flow_kill_bench [--existing 200] [--samples 100] [--drivers netlink,netlink-host,libnftables]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from netagent.agent import Agent
from netagent.config import Config
from netagent.datapath import conntrack
from netagent.firewall.drivers import open_driver
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


async def use_driver(agent: Agent, kind: str) -> None:
    """Make `kind` the host thread's firewall driver (each made once, on that
    thread). "netlink" sends the committer's batches from the loop (as the
    agent does), "netlink-host" from the host thread, "libnftables" through it."""
    loop_batch = agent.__dict__.setdefault("_bench_loop_batch", agent._loop_batch)
    agent._loop_batch = loop_batch if kind == "netlink" else None

    def swap() -> None:
        made = agent.host.local("firewall_drivers", dict)
        driver = "libnftables" if kind == "libnftables" else "netlink"
        if driver not in made:
            made[driver] = open_driver(driver, agent.config.prefix, agent.ruleset_generation)
            if loop_batch is not None and driver == "netlink":
                made[driver] = loop_batch.driver   # the one the loop's sender reads its shapes from
        agent.host._local.firewall = made[driver]   # what agent._host_fw() returns from now on
    await agent.host.call(swap)


async def bench(bed: Testbed, existing: int, samples: int, state: Path, drivers: list[str]) -> dict:
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
        by_driver: dict[str, list[float]] = {kind: [] for kind in drivers}
        for _ in range(4):
            for kind in drivers:
                await use_driver(agent, kind)
                by_driver[kind] += await narrowings(agent, sid, samples // 4, walk=False)
        await use_driver(agent, agent.config.firewall_driver)
        out["live_mark_by_driver"] = {kind: summary(v) for kind, v in by_driver.items()}
        if (sender := agent.__dict__.get("_bench_loop_batch")) is not None:
            out["loop_batches"] = {"sent": sender.sent, "handed_back": sender.handed_back}
        walks = []
        for _ in range(20):
            t0 = time.perf_counter()
            await agent.cleaner.call(conntrack.flush_mark, 0x7E7E7E7E)   # a mark nobody uses: a pure walk
            walks.append((time.perf_counter() - t0) * 1e3)
        out["walk_ms"] = summary(walks)
        out["load_average"] = os.getloadavg()
        out["targets"] = {f"narrowing_p99_at_N={existing}_le_5ms": out["narrowing_ms"]["live_mark"]["p99"] <= 5}
        return out
    finally:
        await agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--existing", type=int, default=200)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--drivers", default="netlink,netlink-host,libnftables",
                    help="firewall drivers to compare, interleaved (netlink-host: the batch from the host thread)")
    args = ap.parse_args()
    bed = Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = asyncio.run(bench(bed, args.existing, args.samples, Path(tmp), args.drivers.split(",")))
            print(json.dumps(out, indent=2))
    finally:
        bed.destroy()


if __name__ == "__main__":
    main()

"""`make bench`: datapath figures against baselines measured in the same run.

Prints a table and writes JSON (default bench-results/datapath.json). Runs in
namespaces it creates; nothing touches the root netns.

  python -m tests.bench.run [--existing 2000] [--samples 200] [--baseline-points 10,200] [--grpc-only]

Issue 15 item 5 (10,000 sandboxes) is `--existing 10000`: the warm-allocate
ratio N / N=10, start-up reconcile of every slot, agent RSS and kernel slab
per slot are reported at any N.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from netagent.agent import Agent
from netagent.config import Config
from tests.bench import baselines
from tests.testbed.bed import Testbed


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))], 3)


def summary(xs: list[float]) -> dict[str, float]:
    return {"p50": pct(xs, 50), "p99": pct(xs, 99), "mean": round(statistics.fmean(xs), 3), "n": len(xs)}


async def warm_cycle(agent: Agent, tag: str, samples: int) -> tuple[list[float], list[float]]:
    alloc, rel = [], []
    for k in range(samples):
        sid = f"bench-{tag}-{k}"
        t0 = time.perf_counter()
        await agent.allocate(sid)
        t1 = time.perf_counter()
        await agent.release(sid)
        t2 = time.perf_counter()
        alloc.append((t1 - t0) * 1e3)
        rel.append((t2 - t1) * 1e3)
    return alloc, rel


async def policy_cycle(agent: Agent, samples: int) -> dict[str, dict[str, float]]:
    """UpdatePolicy on a live sandbox: widening (one transaction) and narrowing
    (one transaction plus the conntrack walk that kills now-denied flows)."""
    sid = next(iter(agent.allocations))
    narrow = {"internet": False, "allow_out": ["203.0.113.0/24"]}
    wide = {"internet": False, "allow_out": ["203.0.113.0/24", "198.51.100.7:443", "192.0.2.0/25"]}
    times: dict[str, list[float]] = {"widening": [], "narrowing": []}
    for k in range(samples):
        kind, policy = ("widening", wide) if k % 2 == 0 else ("narrowing", narrow)
        t0 = time.perf_counter()
        await agent.update_policy(sid, policy)
        times[kind].append((time.perf_counter() - t0) * 1e3)
    return {kind: summary(xs) for kind, xs in times.items()}


async def fill(agent: Agent, n: int) -> None:
    have = len(agent.allocations)
    ids = [f"fill-{i}" for i in range(have, n)]
    for chunk in range(0, len(ids), 100):
        await asyncio.gather(*(agent.allocate(i) for i in ids[chunk:chunk + 100]))


async def settle(agent: Agent) -> None:
    """A steady host: the warm slots it has are its pool (no mass refill after
    the fill), builds in flight done, dirty slots cleaned."""
    agent.reconfigure(agent.config.replace(pool_size=len(agent.ready), pool_max_size=0))
    while agent._building or any(s.value == "dirty" for s in agent.slots.values()):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)


def slab_kb() -> int:
    """The kernel's slab memory, host-wide (other work on the machine moves it too)."""
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Slab:"))


def rss_mb() -> float:
    """This process's RSS: the agent runs in it."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


async def restart_reconcile(cfg: Config) -> dict:
    """Start-up reconcile of every slot the stopped agent left (no pool refill)."""
    t0 = time.perf_counter()
    agent = Agent(cfg)
    await agent.start(fill_pool=False)
    out = {"slots": len(agent.slots), "seconds": round(time.perf_counter() - t0, 2)}
    await agent.stop()
    return out


async def bench_grpc_only(bed: Testbed, existing: int, samples: int, state: Path, burst_rounds: int,
                          firewall_driver: str | None = None) -> dict:
    """`--grpc-only`: the gRPC figures alone, at N existing (a quick look)."""
    from tests.bench.grpc_bench import bench_grpc  # imports this module's summary()
    driver = {"firewall_driver": firewall_driver} if firewall_driver else {}
    agent = Agent(Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=state,
                         pool_size=existing + 50, pool_build_concurrency=2, **driver))
    await agent.start()
    try:
        await agent.wait_pool_ready(timeout=900)
        await fill(agent, existing)
        await settle(agent)
        return {"grpc": await bench_grpc(agent, state, samples, burst_rounds)}
    finally:
        await agent.stop()


async def bench_agent(bed: Testbed, existing: int, samples: int, state: Path, burst_rounds: int) -> dict:
    cfg = Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=state,
                 pool_size=existing + 2 * samples + 200, pool_build_concurrency=2)
    agent = Agent(cfg)
    out: dict = {}
    slab0, t0 = slab_kb(), time.perf_counter()
    await agent.start()
    await agent.wait_pool_ready(timeout=900)
    out["pool_fill_s"] = {"slots": len(agent.ready), "seconds": round(time.perf_counter() - t0, 2)}

    await fill(agent, 10)
    await settle(agent)
    a10, r10 = await warm_cycle(agent, "n10", samples)
    await fill(agent, existing)
    await settle(agent)
    slots = len(agent.slots)
    out["memory"] = {"slots": slots, "agent_rss_mb": round(rss_mb(), 1),
                     "kernel_slab_kb_per_slot": round((slab_kb() - slab0) / slots, 1),
                     "netns_on_host": len(os.listdir("/run/netns"))}
    aN, rN = await warm_cycle(agent, f"n{existing}", samples)
    out["warm_allocate_ms"] = {"N=10": summary(a10), f"N={existing}": summary(aN)}
    out["release_ms"] = {"N=10": summary(r10), f"N={existing}": summary(rN)}
    out["update_policy_ms"] = {f"N={existing}": await policy_cycle(agent, samples)}
    out["warm_allocate_ratio_p99"] = round(summary(aN)["p99"] / summary(a10)["p99"], 3)
    out["warm_allocate_ratio_p50"] = round(summary(aN)["p50"] / summary(a10)["p50"], 3)

    t0 = time.perf_counter()
    before = agent.stats["commits"]
    await asyncio.gather(*(agent.allocate(f"conc-{i}") for i in range(50)))
    out["concurrent_50_allocates"] = {"total_ms": round((time.perf_counter() - t0) * 1e3, 2),
                                      "commits": agent.stats["commits"] - before}

    from tests.bench.grpc_bench import bench_grpc  # imports this module's summary()
    out["grpc"] = await bench_grpc(agent, state, samples, burst_rounds)

    # Cold builds: the slot builder alone, on a build thread, at N existing.
    cold: list[float] = []

    def build_some() -> None:
        for idx in range(agent.plan.capacity - 60, agent.plan.capacity - 10):
            t = time.perf_counter()
            agent.builder.build(idx)
            cold.append((time.perf_counter() - t) * 1e3)
            agent.builder.destroy(idx)
    await agent.builds.call(build_some)
    out["cold_slot_build_ms"] = summary(cold)
    out["usage_readings"] = usage_readings(agent)
    await agent.stop()
    out["restart_reconcile"] = await restart_reconcile(agent.config)
    return out


def usage_readings(agent: Agent) -> dict[str, int]:
    """The meter's periodic readings over the whole run (fill included): taken,
    taken from dumps commits cut, and given up (the 10,000 fill's target: none)."""
    m = agent.meter
    return {"taken": m.readings, "cut": m.cut_readings, "given_up": m.failed_readings}


def bench_baseline(name: str, points: list[int], samples: int) -> dict:
    host = f"bb{name[:2]}{int(time.time()) % 10000}"
    with baselines.host_netns(host):
        return baselines.measure(baselines.BASELINES[name], host, f"b{name[:2]}", points, samples)


def grpc_targets(g: dict, n: int) -> dict[str, bool]:
    """Issue 15 item 4: the allocate targets over gRPC from another process."""
    warm, burst = g["warm_allocate_ms"], g["burst_200_default_pool_ms"]["adaptive"]["all"]
    return {f"grpc_added_p50_at_N={n}_le_1ms": warm["added_p50_ms"] <= 1,
            f"grpc_warm_allocate_p50_at_N={n}_le_2ms": warm["grpc"]["p50"] <= 2,
            f"grpc_warm_allocate_p99_at_N={n}_le_5ms": warm["grpc"]["p99"] <= 5,
            f"grpc_burst_200_default_pool_p99_at_N={n}_le_10ms": burst["p99"] <= 10,
            f"grpc_concurrent_50_at_N={n}_le_250ms": g["concurrent_50_total_ms"]["grpc"]["p99"] <= 250}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--existing", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--baseline-points", default="10,200")
    ap.add_argument("--baseline-samples", type=int, default=30)
    ap.add_argument("--out", default="bench-results/datapath.json")
    ap.add_argument("--grpc-only", action="store_true", help="only the gRPC figures (no baselines)")
    ap.add_argument("--burst-rounds", type=int, default=4, help="rounds of the 200-call gRPC burst, per pool policy")
    ap.add_argument("--firewall-driver", choices=["netlink", "libnftables"],
                    help="with --grpc-only: config firewall_driver")
    args = ap.parse_args()

    result: dict = {"machine": {"kernel": platform.release(), "python": platform.python_version()},
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    bed = Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.grpc_only:
                result["firewall_driver"] = args.firewall_driver or "default"
                result["netagent"] = asyncio.run(bench_grpc_only(bed, args.existing, args.samples, Path(tmp),
                                                                 args.burst_rounds, args.firewall_driver))
            else:
                result["netagent"] = asyncio.run(bench_agent(bed, args.existing, args.samples, Path(tmp),
                                                             args.burst_rounds))
    finally:
        bed.destroy()
    if args.grpc_only:
        result["load_average"] = os.getloadavg()
        result["targets"] = grpc_targets(result["netagent"]["grpc"], args.existing)
        print(json.dumps(result, indent=2))
        return
    points = [int(p) for p in args.baseline_points.split(",")]
    result["baselines"] = {name: bench_baseline(name, points, args.baseline_samples) for name in ("shell", "cni")}
    na = result["netagent"]
    shell10 = result["baselines"]["shell"][f"N={points[0]}"]["setup_ms"]["p50"]
    result["cold_build_speedup_vs_shell_p50"] = round(shell10 / na["cold_slot_build_ms"]["p50"], 2)
    n = args.existing   # the labels carry the N measured (docs/performance.md's targets are at N=2,000)
    result["targets"] = {
        f"warm_allocate_p99_at_N={n}_le_5ms": na["warm_allocate_ms"][f"N={n}"]["p99"] <= 5,
        f"warm_allocate_ratio_p50_N={n}_vs_N=10_le_1.3": na["warm_allocate_ratio_p50"] <= 1.3,
        f"concurrent_50_at_N={n}_le_250ms": na["concurrent_50_allocates"]["total_ms"] <= 250,
        "cold_build_p50_le_8ms": na["cold_slot_build_ms"]["p50"] <= 8,
        "cold_build_ge_3x_shell": result["cold_build_speedup_vs_shell_p50"] >= 3,
        **grpc_targets(na["grpc"], n),
        f"update_policy_widening_p99_at_N={n}_le_5ms": na["update_policy_ms"][f"N={n}"]["widening"]["p99"] <= 5,
        f"restart_reconcile_at_N={n}_le_30s": na["restart_reconcile"]["seconds"] <= 30,
        f"no_usage_reading_given_up_at_N={n}": na["usage_readings"]["given_up"] == 0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()

"""CPU time per warm allocate, by thread: a second measure beside run.py's wall
times, much less moved by a busy machine (waiting for a core costs no CPU).

An agent with a small pool in namespaces it creates, 10 allocations, no pool
refills while measuring, then `--allocates` allocates one after another; the
process's user+sys time and each thread's are divided by their number. Run it
from each tree to compare them, alternating (docs/history/performance-log.md, "Core redesign (issue 12)"):

  python -m tests.bench.allocate_cpu [--allocates 200] [--out FILE]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

from netagent.agent import Agent
from netagent.config import Config
from tests.testbed.bed import Testbed


def process_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def thread_cpu_s() -> dict[str, float]:
    """user+sys seconds of each live thread, by its Python name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue   # the thread ended
        out[names.get(int(tid), f"thread-{tid}")] = (int(fields[11]) + int(fields[12])) / tick
    return out


def stop_refills(agent: Agent) -> None:
    """No refill builds while measuring. Trees before issue 12 have a mutable
    Config without replace(); this script also runs there (before/after)."""
    if hasattr(agent.config, "replace"):
        agent.reconfigure(agent.config.replace(pool_size=0))
    else:
        agent.config.pool_size = 0


async def measure(bed: Testbed, state: Path, allocates: int) -> dict:
    agent = Agent(Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=state,
                         pool_size=10 + allocates + 20, pool_build_concurrency=2))
    await agent.start()
    try:
        await agent.wait_pool_ready(timeout=900)
        await asyncio.gather(*(agent.allocate(f"base-{i}") for i in range(10)))
        stop_refills(agent)
        while agent._building or any(s.value == "dirty" for s in agent.slots.values()):
            await asyncio.sleep(0.05)
        threads0, cpu0, wall0 = thread_cpu_s(), process_cpu_s(), time.perf_counter()
        for k in range(allocates):
            await agent.allocate(f"cpu-{k}")
        cpu, wall, threads = process_cpu_s() - cpu0, time.perf_counter() - wall0, thread_cpu_s()
    finally:
        await agent.stop()
    by_thread = {name: round((s - threads0.get(name, 0.0)) / allocates * 1e3, 3) for name, s in threads.items()}
    return {"allocate_cpu_ms": round(cpu / allocates * 1e3, 3), "allocate_wall_ms": round(wall / allocates * 1e3, 3),
            "cpu_ms_by_thread": {k: v for k, v in by_thread.items() if v > 0}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--allocates", type=int, default=200)
    ap.add_argument("--out", default="bench-results/allocate_cpu.json")
    args = ap.parse_args()
    result: dict = {"load_before": os.getloadavg()}
    bed = Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result.update(asyncio.run(measure(bed, Path(tmp), args.allocates)))
    finally:
        bed.destroy()
    result["load_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""What an idle host costs (#25 item 1): the real daemon (`netagent serve`,
the default pool: size 16, max_size 256, demand window 60 s; metrics refresh
5 s), SANDBOXES allocated over gRPC from another thread pool as an
orchestrator would, then nothing. The daemon's CPU (user + sys of every
thread, from /proc/PID/stat, so the kernel work it asks for counts too) in
windows of WINDOW seconds from FROM seconds after the last allocate, and
per thread name.

`--before-ref REF` runs the same with the daemon of a git ref of this
repository first (`git archive`d), so the before figure is of the same
sitting; `--self-repair-off` adds this tree with self-repair off (what the
rest of the agent costs at rest).

    python -m tests.bench.idle_bench [--sandboxes 2000] [--from-s 30] [--window 30] [--windows 3]
                                     [--before-ref REF] [--self-repair-off]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from netagent.client import Client
from tests.bench.churn_bench import CLK_TCK, proc_ticks, stop_daemon, thread_ticks
from tests.bench.cli_bench import archive
from tests.service.daemon import Daemon, write_config
from tests.testbed.bed import Testbed

TARGET_CORE_SHARE = 0.02


def allocate_all(client: Client, n: int, prefix: str) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.allocate(f"{prefix}-{k}", timeout=120), range(n)))


def ticks(pid: int) -> int:
    user, system = proc_ticks(f"/proc/{pid}/stat")
    return user + system


def windows(pid: int, start: float, from_s: float, width: float, count: int) -> list[dict]:
    """CPU of the daemon (cores) and of its busiest threads in each window."""
    out = []
    for k in range(count):
        lo = start + from_s + k * width
        time.sleep(max(0.0, lo - time.monotonic()))
        t0, c0, threads0 = time.monotonic(), ticks(pid), thread_ticks(pid)
        time.sleep(max(0.0, lo + width - time.monotonic()))
        t1, c1, threads1 = time.monotonic(), ticks(pid), thread_ticks(pid)
        secs = t1 - t0
        by_thread = {name: round((threads1[name] - threads0.get(name, 0)) / CLK_TCK / secs, 4) for name in threads1}
        out.append({"from_s": round(t0 - start, 1), "to_s": round(t1 - start, 1),
                    "cpu_cores": round((c1 - c0) / CLK_TCK / secs, 4),
                    "threads": {n: v for n, v in sorted(by_thread.items(), key=lambda kv: -kv[1]) if v > 0}})
    return out


def run(bed: Testbed, tmp: Path, sandboxes: int, from_s: float, width: float, count: int,
        self_repair: bool = True, pool_size: int = 16, pool_max_size: int = 256, tree: str | None = None) -> dict:
    config = write_config(bed, tmp, pool_size=pool_size, pool_max_size=pool_max_size, metrics_refresh_s=5.0,
                          ruleset_check_interval_s=1.0, self_repair=self_repair)
    daemon = Daemon(config, tree=tree).start(timeout=300)
    try:
        client = daemon.client(timeout=30)
        t0 = time.monotonic()
        allocate_all(client, sandboxes, "idle")
        last = time.monotonic()
        out = {"sandboxes": sandboxes, "self_repair": self_repair, "fill_s": round(last - t0, 1),
               "load_average_before": [round(x, 2) for x in os.getloadavg()],
               "windows": windows(daemon.proc.pid, last, from_s, width, count)}
        out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        out["worst_window_cpu_cores"] = max(w["cpu_cores"] for w in out["windows"])
        out["ready_slots_at_end"] = client.host_info().ready_slots
    finally:
        stop_daemon(daemon)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sandboxes", type=int, default=2000)
    ap.add_argument("--from-s", type=float, default=30.0, help="first window starts this long after the last allocate")
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--before-ref", metavar="REF", help="first the daemon of this git ref, same sitting")
    ap.add_argument("--self-repair-off", action="store_true", help="also this tree with self-repair off")
    args = ap.parse_args()
    result: dict = {}
    with tempfile.TemporaryDirectory() as src:
        runs = [("after", None, True)]
        if args.before_ref:
            runs.insert(0, ("before", archive(args.before_ref, src), True))
            result["before_ref"] = args.before_ref
        if args.self_repair_off:
            runs.append(("after_self_repair_off", None, False))
        for name, tree, self_repair in runs:
            bed = Testbed().create()
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    result[name] = run(bed, Path(tmp), args.sandboxes, args.from_s, args.window, args.windows,
                                       self_repair=self_repair, tree=tree)
            finally:
                bed.destroy()
    result["target_lt_2pct_every_window"] = result["after"]["worst_window_cpu_cores"] < TARGET_CORE_SHARE
    print(json.dumps(result, indent=2))
    print(headline(result), file=sys.stderr)


def headline(result: dict) -> str:
    """One line per run: the CPU of each window, in % of a core."""
    lines = [f"idle agent, {result['after']['sandboxes']} sandboxes allocated over gRPC, CPU per window "
             f"(% of a core; target < {TARGET_CORE_SHARE:.0%} in every window)"]
    for name in ("before", "after", "after_self_repair_off"):
        if name in result:
            r = result[name]
            cells = "  ".join(f"{w['from_s']:.0f}-{w['to_s']:.0f} s: {w['cpu_cores']:.2%}" for w in r["windows"])
            lines.append(f"  {name:22} {cells}  (load {r['load_average_before'][0]} -> {r['load_average_after'][0]})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

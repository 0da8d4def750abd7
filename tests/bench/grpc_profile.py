"""Where an idle agent's Allocate/Release over gRPC spends its time (#15 item 4).

Starts the real daemon (`netagent serve`) on a test bed, calls Allocate and
Release from another process with the calls spaced apart (an idle agent), and
samples the daemon with py-spy meanwhile. Prints JSON: the client-side
latencies and, from the samples, the share of active time per thread and the
functions with the most inclusive time on each busy thread.

    python -m tests.bench.grpc_profile [--calls 60] [--gap 0.3] [--pool-size 16]
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.run import summary
from tests.service.daemon import Daemon, write_config
from tests.testbed.bed import Testbed

CLIENT = r"""
import json, sys, time
from netagent.client import Client
c = Client(socket_path=sys.argv[1])
c.host_info()
gap = float(sys.argv[3])
out = {"health": [], "allocate": [], "release": []}
for k in range(int(sys.argv[2])):
    t0 = time.perf_counter(); c.host_info(); t1 = time.perf_counter()
    c.allocate(f"prof-{k}"); t2 = time.perf_counter()
    time.sleep(gap)
    t3 = time.perf_counter(); c.release(f"prof-{k}"); t4 = time.perf_counter()
    out["health"].append((t1 - t0) * 1e3)
    out["allocate"].append((t2 - t1) * 1e3)
    out["release"].append((t4 - t3) * 1e3)
    time.sleep(gap)
print(json.dumps(out))
"""


def breakdown(raw: Path, top: int = 10) -> dict:
    """py-spy raw (collapsed) stacks -> per thread: its share of the active
    samples, the netagent functions with the most inclusive time (share of the
    thread's samples) and the leaf functions (any module) with the most self time."""
    threads: collections.Counter[str] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaf: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread, n = frames[0].split("): ")[-1], int(count)
        threads[thread] += n
        leaf[thread][short(frames[-1])] += n
        for frame in {short(f) for f in frames[1:] if "netagent/" in f}:
            inclusive[thread][frame] += n
    total = sum(threads.values()) or 1
    return {thread: {"share": round(n / total, 3),
                     "netagent_inclusive": [(f, round(c / n, 3)) for f, c in inclusive[thread].most_common(top)],
                     "leaf_self": [(f, round(c / n, 3)) for f, c in leaf[thread].most_common(top)]}
            for thread, n in threads.most_common(5)}


def short(frame: str) -> str:
    """'func (/path/to/mod.py:12)' -> 'func mod.py:12'."""
    name, _, where = frame.partition(" (")
    return f"{name} {where.rsplit('/', 1)[-1].rstrip(')')}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=60)
    ap.add_argument("--gap", type=float, default=0.3)
    ap.add_argument("--pool-size", type=int, default=16)
    args = ap.parse_args()
    bed = Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            daemon = Daemon(write_config(bed, tmp, pool_size=args.pool_size, metrics_refresh_s=5.0)).start()
            try:
                time.sleep(3)  # the pool fills; then the agent is idle
                raw = tmp / "profile.txt"
                spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid",
                                        str(daemon.proc.pid), "--rate", "500", "--threads", "--format", "raw",
                                        "--output", str(raw), "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
                client = subprocess.run([sys.executable, "-c", CLIENT, str(tmp / "api.sock"), str(args.calls),
                                         str(args.gap)], capture_output=True, text=True, timeout=600, check=True)
                spy.send_signal(2)   # SIGINT: py-spy writes its output and exits
                spy.wait(30)
                calls = json.loads(client.stdout)
                result = {"calls": args.calls, "gap_s": args.gap, "pool_size": args.pool_size,
                          "latency_ms": {k: summary(v) for k, v in calls.items()},
                          "profile": breakdown(raw)}
            finally:
                daemon.stop()
    finally:
        bed.destroy()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Cold slot builds: where the time goes, and before/after (issue 15 item 2).

    python -m tests.bench.build_bench [--builds 60] [--rounds 6] [--before /tmp/old]

Builds and destroys slots with the SlotBuilder in a host netns of a test bed
and prints JSON: the build time, and with `--before DIR` (a checkout of an
older tree, e.g. `git archive <commit> | tar -x -C DIR`) the same builds by
that tree's builder, interleaved round by round (each round one process per
side, order swapped every round), so the machine's load hits both alike.
The kernel's costs grow with the number of netns on the host (all of them,
not only ours), so the count is reported next to the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROUND = r"""
import json, sys, threading, time
from netagent import netns
from netagent.addressing import AddressPlan
from netagent.config import Config
from netagent.datapath.slot_builder import SlotBuilder
from netagent.firewall import ruleset
host, prefix, first, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = Config(prefix=prefix, host_netns=host, uplink="up0")
out = []
def work():
    netns.enter_for_good(netns.path_of(host))
    b = SlotBuilder(cfg, AddressPlan(cfg), ruleset.read_rules(ruleset.SLOT_RULES))
    for idx in range(first, first + n):
        t = time.perf_counter(); b.build(idx); out.append((time.perf_counter() - t) * 1e3)
        b.destroy(idx)
t = threading.Thread(target=work); t.start(); t.join()
print(json.dumps(out))
"""


def summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"p50": round(statistics.median(xs), 2), "p90": round(xs[int(len(xs) * 0.9)], 2),
            "mean": round(statistics.fmean(xs), 2), "n": len(xs)}


def one_round(tree: Path, host: str, prefix: str, first: int, n: int) -> list[float]:
    res = subprocess.run([sys.executable, "-c", ROUND, host, prefix, str(first), str(n)], cwd=tree,
                         env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                         timeout=600, check=True)
    return list(json.loads(res.stdout))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--builds", type=int, default=60, help="per side")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--before", type=Path, help="an older tree to compare with, interleaved")
    args = ap.parse_args()
    from tests.testbed.bed import Testbed
    here = Path(__file__).resolve().parents[2]
    sides = {"now": here} | ({"before": args.before.resolve()} if args.before else {})
    times: dict[str, list[float]] = {k: [] for k in sides}
    per = max(1, args.builds // args.rounds)
    bed = Testbed().create()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = os.getloadavg()
    try:
        first = 100
        for r in range(args.rounds):
            for side in (list(sides) if r % 2 == 0 else list(reversed(sides))):
                times[side] += one_round(sides[side], bed.host, bed.agent_prefix, first, per)
                first += per
    finally:
        bed.destroy()
    print(json.dumps({"started": started, "netns_on_host": len(os.listdir("/run/netns")),
                      "load_average": [round(x, 2) for x in (load[0], os.getloadavg()[0])],
                      "cold_build_ms": {k: summary(v) for k, v in times.items()}}, indent=2))


if __name__ == "__main__":
    main()

"""`make bench`: many agent publishers on a Redis Cluster, one edge feed following.

Each simulated host is the real RegistryPublisher (no datapath: synthetic
sandboxes with one exposed port), several hosts per worker process. Every host
churns: it alternates allocating a new sandbox and releasing one, `--churn`
changes per second, so its sandbox count stays put. One edge change feed (the
reading half of `netagent edge`: RedisFeed, snapshot then sharded pub/sub)
follows every change in this process. The cluster is 3 masters, no replicas
(replication would only add the same load again on the replicas).

Two designs, interleaved in one run: "heartbeat", the per-record heartbeat
from before issue 16 item 2 (v1 records, every record rewritten every
heartbeat_s: the publisher's full push, forced on that beat), and "liveness",
today's publisher (v2 records written on change, one node record heartbeated).
Each configuration runs, for each design, against the same cluster, flushed in
between:
  base          --sandboxes per host, --churn per host
  2x sandboxes  twice the sandboxes, same churn   (commands/s should not grow)
  2x churn      same sandboxes, twice the churn   (commands/s should grow)

Reported per configuration: Redis commands/s (INFO commandstats, also counting
the commands scripts run) and script calls/s, Redis CPU (INFO cpu, all
masters, in cores), publisher CPU per host (ms of CPU per second), change ->
edge latency p50/p99 (allocation seen by the feed minus the moment the host
marked it; the ids carry that moment), and the edge's full-sync time (a
snapshot of every record). JSON on stdout, a table on stderr.

  python -m tests.bench.hosts_sim [--hosts 100] [--procs 4] [--sandboxes 20] [--churn 1] [--seconds 10]
  python -m tests.bench.hosts_sim --full     # the issue's load: 1000 sandboxes, 10 changes/s per host
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis as syncredis

from netagent.edge.feeds import FeedLost, RedisFeed
from netagent.registry import NodeRecord, PortRecord, SandboxRecord, open_registry
from netagent.registry.publisher import RegistryPublisher
from netagent.registry.redis import RedisRegistry
from tests.testbed.redis_cluster import RedisCluster

TTL_S, HEARTBEAT_S = 10.0, 3.0     # the agent's defaults
READY_TIMEOUT_S = 600.0            # every host's first full push, one host after another


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))], 1) if xs else -1.0


# -- worker process: a few hosts' publishers --

DESIGNS = {
    "heartbeat": "v1 records, every record rewritten every heartbeat (the design before issue 16 item 2)",
    "liveness": "v2 records written on change, one node record heartbeated (issue 16 item 2)",
}


class SimHost:
    def __init__(self, url: str, index: int, sandboxes: int, design: str) -> None:
        self.design = design
        self.node_id = f"host-{index:03d}"
        self.address = f"10.20.{index // 250}.{index % 250 + 1}"
        self.live = {f"h{index}-i{i}": 20000 + i for i in range(sandboxes)}
        self.changes = 0
        self.pub = RegistryPublisher(open_registry(url), self.node, self.record, lambda: list(self.live),
                                     ttl_s=TTL_S, heartbeat_s=HEARTBEAT_S)

    def node(self) -> NodeRecord:
        return NodeRecord(self.node_id, self.address, time.time(), sandboxes=len(self.live))

    def record(self, sid: str, seq: int) -> SandboxRecord | None:
        port = self.live.get(sid)
        if port is None:
            return None
        now = time.time()
        return SandboxRecord(sid, self.node_id, self.address, seq, now,
                             (PortRecord(8080, "tcp", port, True, now, now),),
                             v=1 if self.design == "heartbeat" else 2)

    async def old_heartbeat(self, until: float) -> None:
        """The per-record heartbeat, with today's publisher: a full push (every record,
        as v1 with its TTL) every heartbeat_s."""
        while time.monotonic() < until:
            await asyncio.sleep(HEARTBEAT_S)
            self.pub.push_all_now()

    async def churn(self, per_s: float, until: float) -> None:
        """Alternate allocate and release; the new ids carry the moment of the change (ns)."""
        await asyncio.sleep(random.random() / per_s)       # spread the hosts over the period
        allocate = True
        while time.monotonic() < until:
            if allocate:
                sid = f"{self.node_id}-c{time.time_ns()}"
                self.live[sid] = 30000 + self.changes % 10000
                self.pub.mark(sid)
            else:
                sid = random.choice(list(self.live))
                del self.live[sid]
                self.pub.mark(sid)
            allocate = not allocate
            self.changes += 1
            await asyncio.sleep(1 / per_s)


async def worker(url: str, first: int, count: int, sandboxes: int, churn: float, seconds: float,
                 design: str) -> None:
    hosts = [SimHost(url, i, sandboxes, design) for i in range(first, first + count)]
    # Hosts come up one after another, as a fleet does: each first full push
    # (--full: 1,000 records) before the next host starts. All at once, 25
    # hosts' pushes in one event loop starved each other's replies past the
    # registry's 1 s command timeout, and every failed push started over.
    deadline = time.monotonic() + READY_TIMEOUT_S
    for h in hosts:
        h.pub.start()
        while not (h.pub.healthy and h.pub.writes >= sandboxes):
            if time.monotonic() > deadline:
                errors = {x.pub.last_error for x in hosts if x.pub.last_error}
                print(f"not ready after {READY_TIMEOUT_S} s: {sorted(errors)[:3]}", flush=True)
                sys.exit(1)
            await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)   # "go"
    cpu0, until = time.process_time(), time.monotonic() + seconds
    old = [h.old_heartbeat(until) for h in hosts] if design == "heartbeat" else []
    await asyncio.gather(*(h.churn(churn, until) for h in hosts), *old)
    cpu = time.process_time() - cpu0
    print(json.dumps({"hosts": count, "cpu_s": cpu, "changes": sum(h.changes for h in hosts),
                      "errors": sum(h.pub.errors for h in hosts), "refused": sum(h.pub.refused for h in hosts)}),
          flush=True)
    # heartbeats go on until the parent has taken the edge's full sync (EOF on
    # stdin): a v2 record counts only while its node is alive
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for h in hosts:
        await h.pub.stop()


# -- the parent: cluster, workers, the edge feed, Redis figures --

def redis_counters(cluster: RedisCluster) -> tuple[int, int, float]:
    """(commands, script calls, CPU seconds) summed over the masters."""
    commands = scripts = 0
    cpu = 0.0
    for node in cluster.masters():
        with node.client() as c:
            stats = c.info("commandstats")
            commands += sum(v["calls"] for v in stats.values())
            scripts += sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_eval", "cmdstat_evalsha"))
            info = c.info("cpu")
            cpu += info["used_cpu_sys"] + info["used_cpu_user"]
    return commands, scripts, cpu


async def follow(feed: RedisFeed, latencies: list[float], stop: asyncio.Event) -> None:
    seen: set[str] = set()
    while not stop.is_set():
        try:
            changes = await feed.changes()
        except FeedLost:
            await feed.snapshot()
            continue
        now = time.time_ns()
        for ch in changes:
            sid = ch.sandbox_id
            if ch.entries and "-c" in sid and sid not in seen:
                seen.add(sid)
                latencies.append((now - int(sid.rsplit("-c", 1)[1])) / 1e6)


async def full_sync(url: str) -> tuple[int, float]:
    """(records, seconds) of a new edge's first snapshot: connect, subscribe, read everything."""
    reader = RedisRegistry(url)
    feed = RedisFeed(reader)
    try:
        start = time.monotonic()
        records = len(await feed.snapshot())
        return records, time.monotonic() - start
    finally:
        await feed.close()
        await reader.close()


async def run_config(cluster: RedisCluster, args: argparse.Namespace, sandboxes: int, churn: float,
                     design: str) -> dict:
    cluster.flush()
    per = [args.hosts // args.procs + (1 if i < args.hosts % args.procs else 0) for i in range(args.procs)]
    starts = [sum(per[:i]) for i in range(args.procs)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.bench.hosts_sim", "--worker", cluster.url, str(s),
                               str(n), str(sandboxes), str(churn), str(args.seconds), design],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for s, n in zip(starts, per, strict=True)]
    try:
        for p in procs:
            line = await asyncio.to_thread(p.stdout.readline)
            assert line.strip() == "ready", f"a worker failed to start: {line!r}"
        reader = RedisRegistry(cluster.url)
        feed = RedisFeed(reader)
        await feed.snapshot()
        latencies: list[float] = []
        stop = asyncio.Event()
        follower = asyncio.create_task(follow(feed, latencies, stop))
        c0, s0, cpu0 = redis_counters(cluster)
        t0 = time.monotonic()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(await asyncio.to_thread(p.stdout.readline)) for p in procs]
        elapsed = time.monotonic() - t0
        c1, s1, cpu1 = redis_counters(cluster)
        await asyncio.sleep(1.0)        # the last changes reach the feed
        stop.set()
        await follower
        await feed.close()
        await reader.close()
        records, full_sync_s = await full_sync(cluster.url)
    finally:
        for p in procs:
            p.stdin.close()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return {
        "design": design, "sandboxes_per_host": sandboxes, "churn_per_host_per_s": churn, "seconds": round(elapsed, 1),
        "redis_commands_per_s": round((c1 - c0) / elapsed), "script_calls_per_s": round((s1 - s0) / elapsed),
        "redis_cpu_cores": round((cpu1 - cpu0) / elapsed, 3),
        "publisher_cpu_ms_per_s_per_host": round(1000 * sum(r["cpu_s"] for r in results) / args.hosts / elapsed, 2),
        "changes": sum(r["changes"] for r in results), "publisher_errors": sum(r["errors"] for r in results),
        "change_to_edge_ms": {"p50": pct(latencies, 50), "p99": pct(latencies, 99), "n": len(latencies),
                              "mean": round(statistics.fmean(latencies), 1) if latencies else -1.0},
        "edge_full_sync_s": round(full_sync_s, 3), "edge_full_sync_records": records,
    }


async def main(args: argparse.Namespace) -> dict:
    configs = [("base", args.sandboxes, args.churn), ("2x sandboxes", 2 * args.sandboxes, args.churn),
               ("2x churn", args.sandboxes, 2 * args.churn)]
    with tempfile.TemporaryDirectory() as tmp:
        cluster = RedisCluster(Path(tmp), masters=3, replicas=0)
        try:
            cluster.create()
            # the two designs interleaved, so the box's load hits both alike
            out = {f"{name}, {design}": await run_config(cluster, args, n, c, design)
                   for name, n, c in configs for design in DESIGNS}
        finally:
            cluster.stop()
    return {"designs": DESIGNS,
            "hosts": args.hosts, "procs": args.procs, "ttl_s": TTL_S, "heartbeat_s": HEARTBEAT_S,
            "loadavg_before": os.getloadavg(), "configs": out, "target_p99_ms": 500}


def table(res: dict) -> str:
    rows = [f"{res['hosts']} hosts in {res['procs']} processes, 3-master Redis Cluster",
            *(f"  {name}: {text}" for name, text in res["designs"].items()),
            f"{'config':<25}{'sbx/host':>9}{'chg/s/h':>8}{'cmds/s':>9}{'scripts/s':>10}{'redis cpu':>10}"
            f"{'pub ms/s/h':>11}{'edge p50':>9}{'p99 ms':>8}{'sync s':>8}"]
    for name, r in res["configs"].items():
        lat = r["change_to_edge_ms"]
        rows.append(f"{name:<25}{r['sandboxes_per_host']:>9}{r['churn_per_host_per_s']:>8}"
                    f"{r['redis_commands_per_s']:>9}{r['script_calls_per_s']:>10}{r['redis_cpu_cores']:>10}"
                    f"{r['publisher_cpu_ms_per_s_per_host']:>11}{lat['p50']:>9}{lat['p99']:>8}"
                    f"{r['edge_full_sync_s']:>8}")
    rows.append(f"load average before: {res['loadavg_before']}; target: change->edge p99 <= {res['target_p99_ms']} ms")
    return "\n".join(rows)


def cli() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, first, count, sandboxes, churn, seconds, design = sys.argv[2:9]
        asyncio.run(worker(url, int(first), int(count), int(sandboxes), float(churn), float(seconds), design))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--procs", type=int, default=4)
    # The short default fits a shared 2-core box; --full is the load.
    ap.add_argument("--sandboxes", type=int, default=20)
    ap.add_argument("--churn", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--full", action="store_true", help="1000 sandboxes and 10 changes/s per host")
    args = ap.parse_args()
    if args.full:
        args.sandboxes, args.churn = 1000, 10.0
    res = asyncio.run(main(args))
    print(table(res), file=sys.stderr)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    try:
        cli()
    except syncredis.RedisError as exc:
        sys.exit(f"hosts_sim: {exc}")

"""The connection log at scale (#23): SANDBOXES live sandboxes on the real
daemon, RATE new connections a second for SECONDS from their slot netns to a
TEST-NET server (tests/bench/flow_log_client.py), each closed with FINs.

Reported: connections made; the periodic counters readings' CPU (each
parses the whole table; run at 5 s here so a 30 s run has several, and
scaled to the default 60 s); flow records stored for them (read from flows.db
once every connection has one or the count stops growing); records lost
(connections, by source address and port, without a record: the target is
0; a connection the kernel retried after a reset of its first SYN has two
records, both real); the agent's CPU during the run (whole process, and its
flow reader and writer threads); flows.db and flows.jsonl bytes per record;
conntrack event drops the agent logged; the load average. The host netns's
TIME_WAIT and CLOSE timeouts are cut to 1 s, as in the tests, so records come
within seconds of the close (the kernel's default 120 s TIME_WAIT delays
records, not their rate). Meanwhile an allocate + release every 0.2 s over
gRPC gives the allocate latency beside the record; `--no-record` runs the
same load with the record off, for comparison. Prints JSON.

    python -m tests.bench.flow_log_bench [--sandboxes 2000] [--rate 1000] [--seconds 30] [--no-record]
                                         [--kernel-timeouts]
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from netagent.client import Client
from tests.bench.churn_bench import proc_ticks, thread_shares, thread_ticks
from tests.bench.run import summary
from tests.datapath.test_flow_record import quick_ends
from tests.service.daemon import Daemon, write_config
from tests.testbed.bed import Testbed

CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT = 7100
POOL_SIZE = 64
SETTLE_S = 5.0
ALLOCATE_EVERY_S = 0.2


def lost(made: list[list], recorded: list[tuple[str, int]]) -> int:
    """Connections (source, port) without a record; a reused port counts once per use."""
    want = Counter((ip, port) for ip, port in made)
    have = Counter(recorded)
    return sum(max(0, n - have[key]) for key, n in want.items())


def figures(client: dict, recorded: list[tuple[str, int]], ticks: tuple[int, int], threads: dict[str, float],
            sizes: dict[str, int]) -> dict:
    """Pure: the client's counts, the records found, CPU ticks over the run -> figures."""
    seconds = client["end"] - client["start"]
    made = client["made"]
    return {"connections_made": made, "connections_failed": client["failed"], "missed": client["missed"],
            "rate_achieved_per_s": round(made / seconds, 1) if seconds > 0 else 0.0,
            "records": len(recorded), "records_lost": (missing := lost(client["flows"], recorded)),
            "agent_cpu_cores": round((ticks[1] - ticks[0]) / CLK_TCK / seconds, 4) if seconds > 0 else 0.0,
            "flow_threads_cpu_cores": {k: v for k, v in threads.items() if k.startswith("netagent-flow")},
            "db_bytes_per_record": round(sizes["db"] / len(recorded), 1) if recorded else None,
            "jsonl_bytes_per_record": round(sizes["jsonl"] / len(recorded), 1) if recorded else None,
            "meets_target": {"zero_records_lost": made > 0 and missing == 0}}


def read_records(db: Path, since: float) -> list[tuple[str, int]]:
    """(source, source port) of the bench's records."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [(ip, port) for ip, port in conn.execute(
            "SELECT source, source_port FROM flows WHERE destination_port = ? AND start >= ?", (PORT, since - 5))]
    finally:
        conn.close()


def wait_records(db: Path, since: float, made: list[list], quiet_s: float = 15.0,
                 timeout: float = 300.0) -> list[tuple[str, int]]:
    """Until every connection has a record, or the count has not grown for quiet_s."""
    deadline = time.monotonic() + timeout
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        found = read_records(db, since)
        if lost(made, found) == 0:
            return found
        if len(found) != last:
            last, last_change = len(found), time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            return found
        time.sleep(1.0)
    return read_records(db, since)


class AllocateSampler:
    """Allocate + release of a fresh sandbox every ALLOCATE_EVERY_S over gRPC
    while the connections run: what the allocate path sees beside the record."""

    def __init__(self, client: Client):
        self.client, self.ms = client, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(ALLOCATE_EVERY_S):
            t0 = time.perf_counter()
            self.client.allocate(f"probe-{k}", timeout=30)
            self.ms.append((time.perf_counter() - t0) * 1e3)
            self.client.release(f"probe-{k}")
            k += 1

    def __enter__(self) -> AllocateSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def readings(metrics: dict[str, float], interval_s: float) -> dict:
    """Pure: the periodic counters readings' cost, from the agent's metrics, and
    what it comes to at the default 60 s interval."""
    n = metrics.get("netagent_flow_counter_readings_total{}", 0.0)
    cpu = metrics.get("netagent_flow_counter_reading_cpu_seconds_total{}", 0.0)
    per = cpu / n if n else 0.0
    return {"interval_s": interval_s, "readings": int(n), "entries_last": int(
        metrics.get("netagent_flow_counter_reading_entries{}", 0.0)), "cpu_ms_per_reading": round(per * 1000, 2),
        "cpu_cores_at_this_interval": round(per / interval_s, 5) if interval_s else 0.0,
        "cpu_cores_at_60s": round(per / 60.0, 5)}


def run(bed: Testbed, tmp: Path, sandboxes: int, rate: float, seconds: float, record: bool = True,
        kernel_timeouts: bool = False, counters_interval_s: float = 5.0) -> dict:
    if not kernel_timeouts:
        quick_ends(bed)
    bed.start_module(bed.inet, "tests.bench.flow_log_client", "serve", str(PORT))
    config = write_config(bed, tmp, pool_size=POOL_SIZE, pool_max_size=max(POOL_SIZE, 256),
                          metrics_refresh_s=5.0, ruleset_check_interval_s=1.0,
                          flows={"record": record, "counters_interval_s": counters_interval_s})
    daemon = Daemon(config).start(timeout=300)
    driver = None
    try:
        driver = subprocess.Popen([sys.executable, "-m", "tests.bench.flow_log_client", "connect",
                                   str(tmp / "api.sock"), str(sandboxes), str(rate), str(seconds), str(PORT)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert driver.stdin is not None and driver.stdout is not None
        filled = json.loads(driver.stdout.readline())
        time.sleep(SETTLE_S)
        pid = daemon.proc.pid
        ticks0, threads0 = sum(proc_ticks(f"/proc/{pid}/stat")), thread_ticks(pid)
        with daemon.client(timeout=30) as api, AllocateSampler(api) as allocates:
            driver.stdin.write("go\n")
            driver.stdin.flush()
            client = json.loads(driver.stdout.readline())
        ticks1, threads1 = sum(proc_ticks(f"/proc/{pid}/stat")), thread_ticks(pid)
        counter_readings = readings(daemon.metrics(bed.host), counters_interval_s)   # as the load ends
        threads = thread_shares(threads0, threads1, client["end"] - client["start"])
        common = {"sandboxes": sandboxes, "rate_per_s": rate, "seconds": seconds, "record": record,
                  "tcp_timeout_time_wait_s": 120 if kernel_timeouts else 1,
                  "fill_seconds": filled["seconds"], "allocate_ms_during": summary(allocates.ms)}
        if not record:   # the comparison run: CPU and allocate latency without the record
            return {**common, "connections_made": client["made"], "connections_failed": client["failed"],
                    "rate_achieved_per_s": round(client["made"] / (client["end"] - client["start"]), 1),
                    "agent_cpu_cores": round((ticks1 - ticks0) / CLK_TCK / (client["end"] - client["start"]), 4),
                    "agent_top_threads_cpu_cores": dict(list(threads.items())[:6]), "loadavg": os.getloadavg()}
        db = tmp / "state" / "flows.db"
        recorded = wait_records(db, client["start_unix"], client["flows"],
                                quiet_s=150.0 if kernel_timeouts else 15.0, timeout=600.0)
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        (total,) = conn.execute("SELECT COUNT(*) FROM flows").fetchone()
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        conn.close()
        # the database's own size (its WAL holds pages not copied back yet)
        sizes = {"db": pages * page_size * len(recorded) // max(total, 1),
                 "jsonl": (tmp / "state" / "flows.jsonl").stat().st_size}
        lost_events = sum(line.count("dropped conntrack events") for line in daemon.log)
        out = {**common, **figures(client, recorded, (ticks0, ticks1), threads, sizes),
               "records_in_db_total": total, "kernel_event_drops_logged": lost_events,
               "counter_readings": counter_readings,
               "agent_top_threads_cpu_cores": dict(list(threads.items())[:6]),
               "loadavg": os.getloadavg()}
        return out
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(10)
        daemon.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sandboxes", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--no-record", action="store_true", help="the same load with [flows] record off (comparison)")
    ap.add_argument("--counters-interval-s", type=float, default=5.0,
                    help="[flows] counters_interval_s: short, so a 30 s run has readings to measure (default 60)")
    ap.add_argument("--kernel-timeouts", action="store_true",
                    help="keep the kernel's TIME_WAIT (120 s): a conntrack table of rate x 120 entries, "
                         "records 2 minutes after each close")
    args = ap.parse_args()
    bed = Testbed().create()
    try:
        with tempfile.TemporaryDirectory(prefix="flowbench") as tmp:
            out = run(bed, Path(tmp), args.sandboxes, args.rate, args.seconds, record=not args.no_record,
                      kernel_timeouts=args.kernel_timeouts, counters_interval_s=args.counters_interval_s)
            print(json.dumps(out, indent=2))
    finally:
        bed.destroy()


if __name__ == "__main__":
    main()

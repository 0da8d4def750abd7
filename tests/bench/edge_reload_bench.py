"""The edge across its own reloads and restarts (issue 27), at --records records.

  python -m tests.bench.edge_reload_bench [--records 50000] [--rate 1000] [--seconds 10]

reload / restart: from the moment a new HAProxy process is started (a seamless reload
with -x/-sf, or a start after kill -9) until
  admin_answers_s   the new process owns the admin socket (it has loaded the config
                    and the 64 map files: it serves from here on)
  known_routes_s    a request for a known sandbox, made from then on, answers 200
                    (from the map files: no control plane involved)
  seen_s            the control plane's watcher saw the new pid
  synced_s          an unknown host answers 404 instead of 503: the control plane
                    loaded its state into the process and set the flag
map_files: what keeping the files on disk costs at --rate changes/s (10 changes/s per
host for 100 hosts) over --records records: file writes/s, bytes/s, and the CPU the
writer adds (the same change loop timed with and without it). Prints JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from pathlib import Path

from netagent.edge.control import EdgeControl
from netagent.edge.feeds import open_feed
from netagent.edge.mapfiles import DEFAULT_INTERVAL_S, MapFileWriter
from netagent.edge.maps import DEFAULT_SHARDS, MapMirror, record_entries
from netagent.edge.runtime import HAProxyRuntime
from tests.bench.haproxy_bench import LOOPBACK, node_registry, sandbox, start_guest
from tests.testbed.haproxy_proc import HAProxy

DOMAIN = "sbx.bench.test"
KNOWN = f"3000-live.{DOMAIN}"
UNKNOWN = f"3000-nobody.{DOMAIN}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def status(port: int, name: str) -> int | None:
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
    except OSError:
        return None
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        line = await reader.readline()
        await reader.read()
        return int(line.split(b" ")[1]) if line else None
    except (OSError, IndexError, ValueError):
        return None
    finally:
        writer.close()


async def until(check, timeout_s: float = 120.0) -> float:   # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError("not true in time")
        await asyncio.sleep(0.002)
    return time.monotonic()


async def new_process(haproxy: HAProxy, control: EdgeControl, how: str) -> dict:
    """Start a new process (reload or restart) and time what it serves, and when."""
    old_pid = haproxy.proc.pid if haproxy.proc else None
    if how == "restart":
        haproxy.kill()
    started = time.monotonic()
    spawn = asyncio.create_task(asyncio.to_thread(haproxy.reload if how == "reload" else haproxy.start,
                                                  120.0))
    port = haproxy.http_port

    async def owns_socket() -> bool:
        pid = await asyncio.to_thread(haproxy.pid_answering)
        return pid is not None and pid != old_pid

    admin = await until(owns_socket)
    known = await until(lambda: _is(port, KNOWN, 200))
    synced = await until(lambda: _is(port, UNKNOWN, 404))
    await spawn
    return {"admin_answers_s": round(admin - started, 3), "known_routes_s": round(known - started, 3),
            "seen_s": round(control.new_process_seen_at - started, 3), "synced_s": round(synced - started, 3)}


async def _is(port: int, name: str, want: int) -> bool:
    return await status(port, name) == want


async def reloads(records: int, workdir: Path, rounds: int) -> dict:
    guest_port, guest = start_guest(workdir)
    registry = await node_registry(f"sqlite:///{workdir}/registry.db")
    haproxy = HAProxy.for_test(workdir / "edge", DOMAIN, threads=2, shards=DEFAULT_SHARDS)
    task = None
    try:
        batch = [sandbox(f"fill{i}", 40000 + i % 1000) for i in range(records)] + [sandbox("live", guest_port)]
        for start in range(0, len(batch), 1000):
            await registry.put_many(batch[start:start + 1000], ttl_s=3600)
        haproxy.start()
        control = EdgeControl(open_feed(registry), HAProxyRuntime(haproxy.settings.admin_socket,  # type: ignore[arg-type]
                                                                  haproxy.settings.map_dir), haproxy.settings.shards)
        task = asyncio.create_task(control.run())
        await asyncio.wait_for(control.synced.wait(), 120)
        await control.files.flush()              # the files hold the full state (the write after a sync)
        out: dict = {"records": records + 1, "shards": DEFAULT_SHARDS,
                     "map_file_bytes": sum(p.stat().st_size for p in Path(haproxy.settings.map_dir).glob("s*.map"))}
        for how in ("reload", "restart"):
            runs = [await new_process(haproxy, control, how) for _ in range(rounds)]
            out[how] = {key: sorted(r[key] for r in runs)[len(runs) // 2] for key in runs[0]} | {"runs": runs}
        return out
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        haproxy.stop()
        guest.terminate()
        guest.wait(timeout=10)
        await registry.close()


async def map_file_cost(records: int, rate: int, seconds: float, workdir: Path, interval_s: float) -> dict:
    """--rate changes/s to random sandboxes of a --records mirror, with and without the writer."""
    async def changes(writer: MapFileWriter | None, mirror: MapMirror) -> float:
        rng = random.Random(1)
        cpu0, start, n = time.process_time(), time.monotonic(), 0
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) - n
            for _ in range(due):           # a heartbeat that moved a port: one set per change
                sid = f"fill{rng.randrange(records)}"
                ops = mirror.replace(sid, record_entries(sandbox(sid, 40000 + rng.randrange(1000))))
                if writer is not None:
                    writer.mark({op.shard for op in ops})
            n += due
            await asyncio.sleep(0.01)
        return time.process_time() - cpu0

    def fresh() -> MapMirror:
        mirror = MapMirror(DEFAULT_SHARDS)
        mirror.reset({f"fill{i}": record_entries(sandbox(f"fill{i}", 40000 + i % 1000)) for i in range(records)})
        return mirror

    base_cpu = await changes(None, fresh())
    mirror = fresh()
    writer = MapFileWriter(str(workdir), mirror.shard_entries, interval_s)
    writer.mark(range(DEFAULT_SHARDS))
    await writer.flush()
    first_bytes, first_writes = writer.bytes_written, writer.writes
    task = asyncio.create_task(writer.run())
    try:
        cpu = await changes(writer, mirror)
        files, written = writer.writes - first_writes, writer.bytes_written - first_bytes   # rounds ended in the run
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await writer.flush()          # the write a cancelled round left running ends first
    return {"records": records, "changes_per_s": rate, "seconds": seconds, "interval_s": interval_s,
            "files_per_s": round(files / seconds, 1), "bytes_per_s": round(written / seconds),
            "all_files_bytes": first_bytes,
            "writer_cpu_s_per_s": round(max(0.0, cpu - base_cpu) / seconds, 3),
            "note": "CPU: process time with the writer minus without (rendering on the loop + the writing thread)"}


async def run(records: int, rate: int, seconds: float, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        out: dict = {"load_before": load()}
        (workdir / "reload").mkdir()
        out["new_process"] = await reloads(records, workdir / "reload", rounds)
        (workdir / "files").mkdir()
        out["map_files"] = await map_file_cost(records, rate, seconds, workdir / "files", DEFAULT_INTERVAL_S)
        out["load_after"] = load()
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--rate", type=int, default=1000, help="registry changes/s (10/s per host x 100 hosts)")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the write-cost run lasts")
    ap.add_argument("--rounds", type=int, default=3, help="reloads and restarts (the median is reported)")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.records, args.rate, args.seconds, args.rounds)), indent=2))


if __name__ == "__main__":
    main()

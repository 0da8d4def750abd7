"""HAProxy edge benchmark on loopback, every figure from the same run.

  python -m tests.bench.haproxy_bench [--seconds 3] [--connections 16] [--big 50000]

Throughput and latency on keep-alive connections, with h2load (nghttp2-client)
as the one load tool for every path:
  direct        straight to the "guest" server (a second haproxy answering a 64-byte 200)
  haproxy_http  through the edge's haproxy, plain HTTP/1.1
  haproxy_h2    through the edge's haproxy, HTTPS with HTTP/2 (one stream at a time per connection)
Each path: a serial run (1 connection: p50/p99 from h2load's per-request log)
and a concurrent run (--connections: requests/s, p50/p99).
Target (issue 13): added p50 <= 0.5 ms. (edge_bench.py measures the edge against a
sandbox's DNATed port in the test bed, the edge's real baseline.)

Route propagation: registry write -> first correctly routed request, p50/p99,
with 1,000 and --big records in the registry (SQLite polled, Redis published),
and the full sync time of those records (target <= 5 s for 50,000). Prints JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from netagent.edge.control import EdgeControl
from netagent.edge.feeds import open_feed
from netagent.edge.maps import DEFAULT_SHARDS
from netagent.edge.runtime import HAProxyRuntime
from netagent.registry import NodeRecord, PortRecord, Registry, SandboxRecord, open_registry
from tests.testbed.haproxy_proc import HAProxy, loopback_port
from tests.testbed.redis_proc import RedisServer
from tests.testbed.tls import wildcard_pem

LOOPBACK = "127.0.0.1"
DOMAIN = "sbx.bench.test"
HOST = f"3000-bench.{DOMAIN}"
GUEST_CONFIG = """
global
    nbthread 1
defaults
    mode http
    timeout client 30s
    timeout server 30s
    timeout connect 3s
frontend guest
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "{body}"
"""
BODY = "x" * 64


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))], 3)


def h2load(url: str, connect_to: str, connections: int, seconds: float, h2: bool, workdir: Path,
           netns: str | None = None) -> dict:
    log = workdir / "h2load.log"
    log.unlink(missing_ok=True)
    args = [*(["ip", "netns", "exec", netns] if netns else []), "h2load", "-c", str(connections), "-m", "1",
            "-D", str(max(1, round(seconds))), "--warm-up-time", "1", "--connect-to", connect_to,
            "--log-file", str(log), *([] if h2 else ["--h1"]), url]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    if not log.exists():
        raise RuntimeError(f"h2load {url} failed: {out.stdout[-1000:]}{out.stderr[-1000:]}")
    lines = [line.split("\t") for line in log.read_text().splitlines() if line]
    latencies = [int(f[2]) / 1000 for f in lines if f[1] == "200"]
    if len(latencies) < 0.99 * len(lines) or not latencies:
        raise RuntimeError(f"h2load {url}: {len(latencies)}/{len(lines)} answered 200\n{out.stdout[-1500:]}")
    rps = float(out.stdout.split(" req/s")[0].rsplit(",", 1)[1])     # "finished in 3.00s, 12470.00 req/s"
    return {"rps": round(rps), "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
            "requests": len(latencies), "not_200": len(lines) - len(latencies)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, connect_to: str, connections: int, seconds: float, h2: bool, workdir: Path,
            server_pid: int, netns: str | None = None) -> dict:
    """Serial and concurrent runs; for the concurrent one also the CPU the serving process
    used, as requests per CPU-second (a figure the other jobs on a shared machine skew less)."""
    serial = h2load(url, connect_to, 1, seconds, h2, workdir, netns)
    cpu0 = cpu_seconds(server_pid)
    concurrent = h2load(url, connect_to, connections, seconds, h2, workdir, netns)
    cpu = cpu_seconds(server_pid) - cpu0
    concurrent["server_cpu_s"] = round(cpu, 2)
    concurrent["requests_per_cpu_s"] = round(concurrent["requests"] / cpu) if cpu else None
    return {"serial": serial, "concurrent": concurrent}


def sandbox(sid: str, host_port: int, seq: int = 1, reachable: bool = True) -> SandboxRecord:
    return SandboxRecord(sid, "node-1", LOOPBACK, seq, time.time(), (
        PortRecord(3000, "tcp", host_port, reachable, 0.0, 0.0),))


def start_guest(workdir: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """The "guest": a haproxy answering a 64-byte 200 on a loopback port."""
    guest_port = loopback_port()
    (workdir / "guest.cfg").write_text(GUEST_CONFIG.format(port=guest_port, body=BODY))
    return guest_port, subprocess.Popen(["haproxy", "-db", "-f", str(workdir / "guest.cfg")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def node_registry(url: str) -> Registry:
    """A connected registry whose node-1 is alive (so its v2 records are served)."""
    registry = open_registry(url)
    await registry.connect()
    await registry.refresh(NodeRecord("node-1", LOOPBACK, time.time()), [], 3600)
    return registry


async def throughput(seconds: float, connections: int, workdir: Path, shards: int) -> dict:
    guest_port, guest = start_guest(workdir)
    registry = await node_registry(f"sqlite:///{workdir}/registry.db")
    await registry.put_sandbox(sandbox("bench", guest_port), ttl_s=3600)
    _, pem = wildcard_pem(workdir / "pki", DOMAIN)
    https = loopback_port()
    haproxy = HAProxy.for_test(workdir / "edge", DOMAIN, https_listen=(f"127.0.0.1:{https}",), tls_pem=str(pem),
                               redirect_to_https=False, threads=2, shards=shards)
    try:
        haproxy.start()
        control = EdgeControl(open_feed(registry), HAProxyRuntime(haproxy.settings.admin_socket,  # type: ignore[arg-type]
                                                                  haproxy.settings.map_dir), haproxy.settings.shards)
        task = asyncio.create_task(control.run())
        await asyncio.wait_for(control.synced.wait(), 10)
        out: dict = {"setup": {"seconds": seconds, "connections": connections, "cpus": os.cpu_count(),
                               "body_bytes": len(BODY), "tool": "h2load -m 1 (one request in flight per "
                               "connection)", "haproxy_threads": 2, "shards": shards}}
        assert haproxy.proc is not None
        paths = {
            "direct": (f"http://{LOOPBACK}:{guest_port}/", f"{LOOPBACK}:{guest_port}", False, guest.pid),
            "haproxy_http": (f"http://{HOST}/", f"{LOOPBACK}:{haproxy.http_port}", False, haproxy.proc.pid),
            "haproxy_h2": (f"https://{HOST}/", f"{LOOPBACK}:{https}", True, haproxy.proc.pid),
        }
        for name, (url, connect_to, h2, pid) in paths.items():
            out[name] = await asyncio.to_thread(measure, url, connect_to, connections, seconds, h2, workdir, pid)
        added = round(out["haproxy_h2"]["serial"]["p50_ms"] - out["direct"]["serial"]["p50_ms"], 3)
        out["targets"] = {
            "h2_added_p50_ms": {"value": added, "target": "<= 0.5", "meets_target": added <= 0.5},
            "h2_rps_over_direct": round(out["haproxy_h2"]["concurrent"]["rps"] / out["direct"]["concurrent"]["rps"],
                                        2),
            "http_added_p50_ms": round(out["haproxy_http"]["serial"]["p50_ms"] - out["direct"]["serial"]["p50_ms"],
                                       3),
        }
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return out
    finally:
        guest.terminate()
        guest.wait(timeout=10)
        haproxy.stop()
        await registry.close()


async def propagation(url: str, records: int, samples: int, workdir: Path) -> dict:
    """Fill the registry, full-sync a fresh haproxy, then time write -> first 200 for new sandboxes."""
    guest_port, guest = start_guest(workdir)
    registry = await node_registry(url)
    haproxy = HAProxy.for_test(workdir / f"edge-{records}", DOMAIN, threads=1)
    try:
        batch = [sandbox(f"fill{i}", 40000 + i % 1000) for i in range(records)]
        for start in range(0, records, 1000):
            await registry.put_many(batch[start:start + 1000], ttl_s=3600)
        haproxy.start()
        syncs: list[float] = []
        control = EdgeControl(open_feed(registry), HAProxyRuntime(haproxy.settings.admin_socket,  # type: ignore[arg-type]
                                                                  haproxy.settings.map_dir), haproxy.settings.shards,
                              on_sync=lambda n, s: syncs.append(s))
        task = asyncio.create_task(control.run())
        await asyncio.wait_for(control.synced.wait(), 60)
        reader, writer = await asyncio.open_connection(LOOPBACK, haproxy.http_port)
        latencies = []
        for k in range(samples):
            name = f"3000-new{k}.{DOMAIN}"
            start = time.perf_counter()
            await registry.put_sandbox(sandbox(f"new{k}", guest_port), ttl_s=3600)
            while True:     # one keep-alive connection, a request every ~1 ms until it routes
                writer.write(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200"):
                    break
                await asyncio.sleep(0.001)
            latencies.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.02)
        writer.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        p99 = pct(latencies, 99)
        return {"records": records, "samples": samples, "full_sync_s": round(syncs[0], 3),
                "full_sync_meets_target": records < 50_000 or syncs[0] <= 5.0,
                "p50_ms": pct(latencies, 50), "p99_ms": p99, "mean_ms": round(statistics.fmean(latencies), 3),
                "p99_meets_target": p99 <= 200}
    finally:
        guest.terminate()
        guest.wait(timeout=10)
        haproxy.stop()
        await registry.close()


async def run(seconds: float, connections: int, big: int, samples: int, shards: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "tp").mkdir()
        out = {"throughput": await throughput(seconds, connections, workdir / "tp", shards)}
        out["propagation"] = {}
        if not samples:
            return out
        for records in dict.fromkeys((1000, big)):   # --big 1000: once
            d = workdir / f"sqlite-{records}"
            d.mkdir()
            out["propagation"][f"sqlite_{records}"] = await propagation(f"sqlite:///{d}/registry.db", records,
                                                                        samples, d)
            d = workdir / f"redis-{records}"
            d.mkdir()
            redis = RedisServer(d)
            redis.start()
            try:
                out["propagation"][f"redis_{records}"] = await propagation(redis.url, records, samples, d)
            finally:
                redis.kill()
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--big", type=int, default=50_000)
    ap.add_argument("--samples", type=int, default=100, help="propagation samples (0: skip propagation)")
    ap.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help="map shards of the throughput edge")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds, args.connections, args.big, args.samples, args.shards)), indent=2))


if __name__ == "__main__":
    main()

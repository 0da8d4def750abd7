"""The edge against its baseline, the sandbox's DNATed port itself, in the same run.

  python -m tests.bench.edge_bench [--seconds 3] [--connections 16] [--rounds 3]

A real Agent (SQLite registry) in the test bed's host netns allocates one sandbox;
a light guest (its own netns, wired to the slot's tap by the test bed's frame relay)
runs a small haproxy answering a 64-byte 200 on port 3000, which the agent exposes
(DNAT from a host port on the uplink, 198.51.100.2). The HAProxy edge runs in the
test bed's "internet" netns, programmed by the control plane from the agent's
registry. h2load, also in the internet netns, one request in flight per connection:
  dnat       http://198.51.100.2:{host_port}/: what a client reaches without the edge
  edge_http  through the edge, plain HTTP/1.1, to the same port
  edge_h2    through the edge, HTTPS + HTTP/2, to the same port
  edge_h2_front  the same through a second edge with --tcp-on-https: its HTTPS listener
             is the SNI front (mode tcp), one hop over a unix socket with PROXY v2 to
             the HTTPS termination
Each path: a serial run (1 connection: p50/p99) and a concurrent one (--connections:
requests/s). The edge's cost is its figures over dnat's. edge_h2 and edge_h2_front run
in alternating rounds (--rounds), the front's cost is the median of each round's pair.
Prints JSON. Every packet stays in namespaces the test bed made (TEST-NET addresses).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from netagent.agent import Agent
from netagent.config import Config
from netagent.edge.control import EdgeControl
from netagent.edge.feeds import open_feed
from netagent.edge.runtime import HAProxyRuntime
from netagent.registry import open_registry
from tests.bench.haproxy_bench import BODY, GUEST_CONFIG, measure
from tests.testbed import sh
from tests.testbed.bed import DNS_IP, UPLINK_IP, LightGuest, Testbed
from tests.testbed.haproxy_proc import HAProxy, loopback_port
from tests.testbed.tls import wildcard_pem

DOMAIN = "sbx.bench.test"
GUEST_PORT = 3000
HOST = f"{GUEST_PORT}-bench.{DOMAIN}"


def status_through(bed: Testbed, port: int, host: str) -> int:
    res = sh.run(sh.PYTHON, "-m", "tests.testbed.http_get", f"127.0.0.1:{port}", "/", "--host", host,
                 "--timeout", "2", ns=bed.inet, check=False, timeout=15)
    try:
        return int(json.loads(res.stdout)["status"])
    except (ValueError, KeyError):
        return 0


def start_edge(bed: Testbed, registry, workdir: Path, pem: Path, **settings: object
               ) -> tuple[HAProxy, int, asyncio.Task]:
    """An edge (haproxy in the internet netns and its control plane), with its HTTPS port."""
    https = loopback_port()
    haproxy = HAProxy.for_test(workdir, DOMAIN, https_listen=(f"127.0.0.1:{https}",), tls_pem=str(pem),
                               redirect_to_https=False, threads=2, **settings)
    haproxy.start(netns=bed.inet)
    control = EdgeControl(open_feed(registry), HAProxyRuntime(  # type: ignore[arg-type]
        haproxy.settings.admin_socket, haproxy.settings.map_dir), haproxy.settings.shards)
    return haproxy, https, asyncio.create_task(control.run())


def front_cost(rounds: list[dict]) -> dict:
    """The front's figures over the direct HTTPS listener's, median over alternating rounds."""
    def median(path: str, *keys: str) -> float:
        values = []
        for r in rounds:
            v = r[path]
            for k in keys:
                v = v[k]
            values.append(v)
        return statistics.median(values)
    direct_rps, front_rps = median("edge_h2", "concurrent", "rps"), median("edge_h2_front", "concurrent", "rps")
    return {
        "rounds": len(rounds),
        "added_p50_ms": round(median("edge_h2_front", "serial", "p50_ms") - median("edge_h2", "serial", "p50_ms"), 3),
        "added_p99_ms": round(median("edge_h2_front", "serial", "p99_ms") - median("edge_h2", "serial", "p99_ms"), 3),
        "concurrent_rps_ratio": round(front_rps / direct_rps, 3),
        "requests_per_cpu_s_ratio": round(median("edge_h2_front", "concurrent", "requests_per_cpu_s")
                                          / median("edge_h2", "concurrent", "requests_per_cpu_s"), 3),
        "per_round_rps": [(r["edge_h2"]["concurrent"]["rps"], r["edge_h2_front"]["concurrent"]["rps"])
                          for r in rounds],
    }


async def run(seconds: float, connections: int, rounds: int = 3) -> dict:
    bed = Testbed().create()
    procs: list[subprocess.Popen[bytes]] = []
    haproxy: HAProxy | None = None
    front: HAProxy | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            url = f"sqlite:///{workdir}/registry.db"
            agent = Agent(Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0",
                                 state_dir=workdir / "state", pool_size=1, dns_upstreams=[DNS_IP], registry_url=url))
            await agent.start()
            registry = open_registry(url)
            await registry.connect()
            control_task = front_task = None
            try:
                net = await agent.allocate("bench")
                guest = await asyncio.to_thread(LightGuest.attach, bed, net, "0")
                (workdir / "guest.cfg").write_text(GUEST_CONFIG.format(port=GUEST_PORT, body=BODY).replace(
                    f"bind 127.0.0.1:{GUEST_PORT}", f"bind 0.0.0.0:{GUEST_PORT}"))
                guest_server = subprocess.Popen(["ip", "netns", "exec", guest.name, "haproxy", "-db", "-f",
                                                 str(workdir / "guest.cfg")],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append(guest_server)
                host_port = await agent.expose("bench", GUEST_PORT)

                _, pem = wildcard_pem(workdir / "pki", DOMAIN)
                haproxy, https, control_task = start_edge(bed, registry, workdir / "edge", pem)
                front, front_https, front_task = start_edge(bed, registry, workdir / "edge-front", pem,
                                                            tcp_on_https=True)
                assert haproxy.proc is not None and front.proc is not None
                for edge in (haproxy, front):
                    for _ in range(600):       # until the prober found the port open and the edge routes it
                        if await asyncio.to_thread(status_through, bed, edge.http_port, HOST) == 200:
                            break
                        await asyncio.sleep(0.1)
                    else:
                        raise RuntimeError("the edge never routed the sandbox port")

                out: dict = {"setup": {"seconds": seconds, "connections": connections, "cpus": os.cpu_count(),
                                       "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                                       "body_bytes": len(BODY), "tool": "h2load -m 1, in the internet netns",
                                       "guest": "haproxy in a light guest (netns + the test bed's frame relay)",
                                       "host_port": host_port}}
                paths = {
                    "dnat": (f"http://{UPLINK_IP}:{host_port}/", f"{UPLINK_IP}:{host_port}", False, guest_server.pid),
                    "edge_http": (f"http://{HOST}/", f"127.0.0.1:{haproxy.http_port}", False, haproxy.proc.pid),
                    "edge_h2": (f"https://{HOST}/", f"127.0.0.1:{https}", True, haproxy.proc.pid),
                }
                for name, (target, connect_to, h2, pid) in paths.items():
                    out[name] = await asyncio.to_thread(measure, target, connect_to, connections, seconds, h2,
                                                        workdir, pid, bed.inet)
                pair = {"edge_h2": paths["edge_h2"],
                        "edge_h2_front": (f"https://{HOST}/", f"127.0.0.1:{front_https}", True, front.proc.pid)}
                ab: list[dict] = []
                for _ in range(rounds):             # alternating, so load drifts hit both alike
                    ab.append({name: await asyncio.to_thread(measure, target, connect_to, connections, seconds,
                                                             h2, workdir, pid, bed.inet)
                               for name, (target, connect_to, h2, pid) in pair.items()})
                out["edge_h2_front"] = ab[-1]["edge_h2_front"]
                out["front_over_edge_h2"] = front_cost(ab)
                for name in ("edge_http", "edge_h2"):
                    out[f"{name}_over_dnat"] = {
                        "added_p50_ms": round(out[name]["serial"]["p50_ms"] - out["dnat"]["serial"]["p50_ms"], 3),
                        "added_p99_ms": round(out[name]["serial"]["p99_ms"] - out["dnat"]["serial"]["p99_ms"], 3),
                        "concurrent_rps_ratio": round(out[name]["concurrent"]["rps"] / out["dnat"]["concurrent"]["rps"],
                                                      2)}
                out["setup"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
                return out
            finally:
                for task in (control_task, front_task):
                    if task is not None:
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
                await registry.close()
                await agent.stop()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        for edge in (haproxy, front):
            if edge is not None:
                edge.stop()
        bed.destroy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of edge_h2 and edge_h2_front")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds, args.connections, args.rounds)), indent=2))


if __name__ == "__main__":
    main()

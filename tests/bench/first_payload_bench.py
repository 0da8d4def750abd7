"""The first-payload check's cost, same run (`python -m tests.bench.first_payload_bench`).

Three sandboxes send from their slot netns (through veth0, the host's forward
path and our rules) to a server on 203.0.113.12:443 in the internet netns
that answers a ClientHello with "hello" and then drains:

- plain: no allowlist (internet on), not checked;
- nfqueue: a domain allowlist (fast.test admitted): the shape we ship, the
  first payload judged in the agent over NFQUEUE, the rest in the kernel;
- tproxy: the other shape the issue names, measured and not shipped: the
  same sandbox's port 443 taken by nft `tproxy` to a transparent proxy in
  the host netns that reads the first payload, dials the destination and
  relays both ways (asyncio streams), as E2B's egress proxy does.

Figures: time from sending the ClientHello to the first byte back and bulk
throughput of one established flow. The first-byte figure is paired: one
client process per shape, each asked for one new flow in turn (the order
rotating every group), so a load spike from the rest of the machine hits the
flows of one group alike; the added latency is the p50/p99 of the per-pair
differences (checked minus plain), overall and per round, with the load average
of the run.
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
from tests.testbed import sh
from tests.testbed.bed import Testbed

FAST_IP = "203.0.113.12"
TPROXY_PORT = 15443
TPROXY_MARK = 0x1
TARGET_ADDED_P99_MS = 1.0
TARGET_RATIO = 0.95
ROUNDS = 20
SERVER = r"""
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("203.0.113.12", 443)); s.listen(1024); print("ready", flush=True)
def serve(c):
    if c.recv(65536):
        c.sendall(b"hello\n")
        while c.recv(1 << 20): pass
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
HELLO = r"""
import ssl
ctx = ssl.create_default_context(); out = ssl.MemoryBIO()
obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="fast.test")
try: obj.do_handshake()
except ssl.SSLWantReadError: pass
HELLO = out.read()
"""
# One new flow per line read, its first-byte time in ms per line written.
LATENCY = HELLO + r"""
import socket, sys, time
for _ in sys.stdin:
    s = socket.create_connection(("203.0.113.12", 443), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.perf_counter(); s.sendall(HELLO); s.recv(16); ms = (time.perf_counter() - t0) * 1000
    s.close()
    print(ms, flush=True)
"""
BULK = HELLO + r"""
import socket, sys, time
s = socket.create_connection(("203.0.113.12", 443), timeout=5)
s.sendall(HELLO); assert s.recv(16) == b"hello\n"
buf = b"x" * (1 << 20); sent = 0; end = time.monotonic() + float(sys.argv[1]); t0 = time.monotonic()
while time.monotonic() < end:
    s.sendall(buf); sent += len(buf)
print(sent * 8 / (time.monotonic() - t0) / 1e9)
"""
# The transparent proxy shape: judge the first payload with the same parser,
# then dial the original destination and relay.
TPROXY = r"""
import asyncio, socket, sys
from netagent.firstpayload.parse import Named, parse
async def pipe(r, w):
    try:
        while data := await r.read(1 << 18):
            w.write(data); await w.drain()
    finally:
        w.close()
async def handle(r, w):
    dst = w.get_extra_info("sockname")
    first = await r.read(65536)
    if not (isinstance(parse(first), Named) and parse(first).name == "fast.test"):
        w.close(); return
    ur, uw = await asyncio.open_connection(dst[0], dst[1])
    uw.write(first)
    await asyncio.gather(pipe(r, uw), pipe(ur, w))
async def main():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_IP, 19, 1)   # IP_TRANSPARENT
    s.bind(("0.0.0.0", PORT)); s.listen(1024)
    server = await asyncio.start_server(handle, sock=s)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
""".replace("PORT", str(TPROXY_PORT))


class FlowClient:
    """A client process in a sandbox's netns that makes one new flow per request."""

    def __init__(self, netns: str):
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sh.PYTHON, "-c", LATENCY], cwd=sh.REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def one_flow_ms(self) -> float:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the flow client exited with {self.proc.wait()}")
        return float(line)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def paired_flows(clients: dict[str, FlowClient], rounds: int, groups: int) -> list[dict[str, list[float]]]:
    """Per round, `groups` times one new flow per shape, back to back; the
    shapes take turns going first."""
    names = list(clients)
    out = []
    for _ in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(groups):
            for name in names[i % len(names):] + names[:i % len(names)]:
                times[name].append(clients[name].one_flow_ms())
        out.append(times)
    return out


def added_latency(rounds: list[dict[str, list[float]]], shape: str) -> dict:
    """The shape's first-byte time minus plain's: per pair (p50/p99 of all the
    differences) and per round (each round's p50 and p99 difference: median
    and range over the rounds)."""
    diffs = [c - p for r in rounds for c, p in zip(r[shape], r["plain"], strict=True)]

    def spread(values: list[float]) -> dict:
        return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                "max": round(max(values), 3)}
    return {"pair_diff_p50": round(pct(diffs, 50), 3), "pair_diff_p99": round(pct(diffs, 99), 3),
            "round_p50_diff": spread([pct(r[shape], 50) - pct(r["plain"], 50) for r in rounds]),
            "round_p99_diff": spread([pct(r[shape], 99) - pct(r["plain"], 99) for r in rounds])}


def gbps(netns: str, seconds: float, runs: int) -> float:
    return statistics.median(float(sh.run(sh.PYTHON, "-c", BULK, str(seconds), ns=netns, timeout=60).stdout)
                             for _ in range(runs))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def tproxy_shape(bed: Testbed, table: str, sandbox_ip: str) -> None:
    """Divert the sandbox's TCP 443 to the proxy (policy routing for marked
    packets, as TPROXY needs) and let it reach the proxy's port."""
    sh.ip("rule", "add", "fwmark", str(TPROXY_MARK), "lookup", "100", ns=bed.host)
    sh.ip("route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100", ns=bed.host)
    sh.run("nft", f"add table ip tp; add chain ip tp pre {{ type filter hook prerouting priority mangle; }}; "
           f"add rule ip tp pre ip saddr {sandbox_ip} tcp dport 443 tproxy to :{TPROXY_PORT} "
           f"meta mark set {TPROXY_MARK} accept; "
           f"insert rule inet {table} sandbox_to_host meta mark {TPROXY_MARK} accept", ns=bed.host)


async def run(flows: int, seconds: float, runs: int) -> dict:
    bed = Testbed().create()
    procs = []
    try:
        sh.ip("addr", "add", f"{FAST_IP}/32", "dev", "lo", ns=bed.inet)
        procs.append(sh.popen(sh.PYTHON, "-c", SERVER, ns=bed.inet))
        assert procs[-1].stdout.readline().strip() == "ready"
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=Path(tmp),
                         pool_size=3, ruleset_check_interval_s=60, new_conn_rate=100000, new_conn_burst=100000)
            agent = Agent(cfg)
            await agent.start()
            await agent.wait_pool_ready(timeout=120)
            plain = await agent.allocate("fp-plain")
            checked = await agent.allocate("fp-checked", {"policy": {"internet": False, "allow_out": ["fast.test"]}})
            proxied = await agent.allocate("fp-tproxy")
            await agent.admission.admit(str(checked.sandbox_ip), [(FAST_IP, 3600)], "fast.test")
            agent.reconfigure(agent.config.replace(pool_size=0))
            procs.append(sh.popen(sh.PYTHON, "-c", TPROXY, ns=bed.host))
            assert procs[-1].stdout.readline().strip() == "ready"
            tproxy_shape(bed, bed.agent_prefix, str(proxied.sandbox_ip))
            # interleaved, so load from the rest of the machine hits every shape alike
            shapes = (("plain", plain), ("nfqueue", checked), ("tproxy", proxied))
            clients = {name: FlowClient(net.netns) for name, net in shapes}
            try:
                load_before = os.getloadavg()[0]
                rounds = await asyncio.to_thread(paired_flows, clients, ROUNDS, max(1, flows // ROUNDS))
                load_after = os.getloadavg()[0]
            finally:
                for client in clients.values():
                    client.close()
            lat = {name: [t for r in rounds for t in r[name]] for name, _ in shapes}
            rates: dict[str, list[float]] = {name: [] for name, _ in shapes}
            for _ in range(runs):
                for name, net in shapes:
                    rates[name].append(await asyncio.to_thread(gbps, net.netns, seconds, 1))
            bulk = {name: statistics.median(v) for name, v in rates.items()}
            queued = agent.first_payload.packets
            await agent.stop()
    finally:
        for p in procs:
            p.kill()
        bed.destroy()
    added = {k: added_latency(rounds, k) for k in ("nfqueue", "tproxy")}
    ratio = {k: bulk[k] / bulk["plain"] for k in ("nfqueue", "tproxy")}
    return {"flows_per_shape": len(lat["plain"]), "rounds": len(rounds),
            "load_average_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
            "first_byte_ms": {k: {"p50": round(pct(v, 50), 3), "p90": round(pct(v, 90), 3),
                                  "p99": round(pct(v, 99), 3)} for k, v in lat.items()},
            "added_first_byte_ms": added,
            "bulk_gbps": {k: round(v, 3) for k, v in bulk.items()},
            "bulk_ratio_vs_plain": {k: round(v, 3) for k, v in ratio.items()},
            "packets_queued_for_the_checked_sandbox": queued,
            "target": f"nfqueue: added first-byte p99 (of the per-pair differences) <= {TARGET_ADDED_P99_MS} ms, "
                      f"bulk ratio >= {TARGET_RATIO}",
            "meets_target": (added["nfqueue"]["pair_diff_p99"] <= TARGET_ADDED_P99_MS
                             and ratio["nfqueue"] >= TARGET_RATIO)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.flows, args.seconds, args.runs)), indent=2))


if __name__ == "__main__":
    main()

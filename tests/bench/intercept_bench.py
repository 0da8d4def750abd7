"""Request interception's cost, same run (`python -m tests.bench.intercept_bench`).

The interception bed (tests/intercept/bed.py): a guest netns, the host netns
with the interceptor (HAProxy + Lua, one thread) and the steering rule, and an
"internet" upstream that is itself an HAProxy answering 200 at once (TLS, its
own CA) on 203.0.113.10:8443 (steered: intercepted) and 203.0.113.11:8443
(not steered: straight through the kernel).

- added latency: one kept HTTPS connection each way, requests alternated
  (intercepted, direct, ...), so machine load hits both alike; p50/p99 of each
  and of the per-pair difference. The rule injects a secret header.
- intercepted requests/s on one interceptor core: h2load, 16 connections x 16
  streams, through the interceptor.
- flows not intercepted: h2load straight to the upstream with the steering
  rule loaded vs without it (the rule is in the nat prerouting chain, which
  sees a connection's first packet only). Three states, rotated each round:
  no nat table at all ("none"), a nat prerouting chain without the steering
  rule ("nat_chain": the agent's ruleset always has one, for ingress DNAT),
  and the chain with the rule ("rule"). rule/none is the figure the target
  was set against; rule/nat_chain is the steering lookup's own cost;
  nat_chain/none is what registering a nat hook costs every new connection.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from netagent.intercept.rules import RuleSet
from tests.intercept.bed import API_IP, GUEST_IP, OTHER_IP, STEER_NFT, intercept_bed
from tests.testbed import sh

PORT = 8443
PLAIN = 8080   # new plain-HTTP connections, one request each: the steering rule is evaluated for every one
UPSTREAM_CFG = """
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend up
  bind :{port} ssl crt {pem} alpn h2,http/1.1
  bind :{plain}
  http-request return status 200 content-type text/plain string ok
"""
# The nat chain without the steering rule (the interceptor's input guard kept).
NAT_CHAIN_NFT = STEER_NFT.replace(
    "    meta l4proto tcp redirect to : ip saddr . ip daddr . tcp dport map @intercept_steer\n", "")
STATES = ("none", "nat_chain", "rule")
PAIRED_CLIENT = """
import http.client, ssl, sys, time, json
ctx = ssl.create_default_context(cafile=sys.argv[1])
n = int(sys.argv[2])
conns = {}
for tag, ip in (("intercepted", sys.argv[3]), ("direct", sys.argv[4])):
    c = http.client.HTTPSConnection(ip, int(sys.argv[5]), context=ctx)
    c.sock = ctx.wrap_socket(__import__("socket").create_connection((ip, int(sys.argv[5]))), server_hostname="api.test")
    conns[tag] = c
times = {"intercepted": [], "direct": []}
for i in range(n + 200):
    order = ("intercepted", "direct") if i % 2 else ("direct", "intercepted")
    for tag in order:
        c = conns[tag]
        t = time.perf_counter()
        c.request("GET", "/v1/x", headers={"Host": "api.test"})
        r = c.getresponse(); r.read()
        if i >= 200:
            times[tag].append(time.perf_counter() - t)
print(json.dumps(times))
"""


def _h2load(ns: str, ip: str, n: int) -> float:
    res = sh.run("h2load", "-n", str(n), "-c", "16", "-m", "16", "--connect-to", f"{ip}:{PORT}",
                 f"https://api.test:{PORT}/v1/x", ns=ns, timeout=300)
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", res.stdout)
    ok = re.search(r"(\d+) succeeded", res.stdout)
    assert m and ok and int(ok.group(1)) == n, res.stdout[-800:]
    return float(m.group(1))


def _new_conns(ns: str, ip: str, n: int) -> float:
    """Connections per second: n connections, one HTTP/1.1 request each."""
    res = sh.run("h2load", "--h1", "-n", str(n), "-c", str(n), f"http://{ip}:{PLAIN}/", ns=ns, timeout=300)
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", res.stdout)
    ok = re.search(r"(\d+) succeeded", res.stdout)
    assert m and ok and int(ok.group(1)) == n, res.stdout[-800:]
    return float(m.group(1))


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


async def run(requests: int, h2_requests: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        async with intercept_bed(tmp, threads=1) as bed:
            up = tmp / "upstream"
            (up / "up.pem").write_text((up / "upstream.crt").read_text() + (up / "upstream.key").read_text())
            (up / "up.cfg").write_text(UPSTREAM_CFG.format(port=PORT, plain=PLAIN, pem=up / "up.pem"))
            proc = subprocess.Popen(["ip", "netns", "exec", bed.inet, "haproxy", "-db", "-f", str(up / "up.cfg")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            bed.procs.append(proc)   # type: ignore[arg-type]
            _wait_listening(bed.inet, (PORT, PLAIN))
            rules = RuleSet.parse([{"id": "auth", "domain": "api.test", "ports": [PORT], "transforms": [
                {"op": "set", "header": "Authorization", "value": "Bearer ${secret:K}"}]}])
            await bed.interceptor.load(GUEST_IP, "bench", rules, {"K": "bench-secret-value"})
            bed.steer(API_IP, PORT)
            # thousands of short connections from one address: connect() takes even
            # ports only (~14k), each held 60 s in TIME_WAIT; without these a run
            # past ~14k connections measured the port search (300 conns/s), not nft
            sh.run("sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1",
                   ns=bed.guest)
            load_before = os.getloadavg()[0]
            res = sh.run(sh.PYTHON, "-c", PAIRED_CLIENT, str(bed.combined_ca), str(requests), API_IP, OTHER_IP,
                         str(PORT), ns=bed.guest, timeout=600)
            times = json.loads(res.stdout)
            diffs = [a - b for a, b in zip(times["intercepted"], times["direct"], strict=True)]
            intercepted_rps = [_h2load(bed.guest, API_IP, h2_requests) for _ in range(3)]
            rps: dict[str, list[float]] = {k: [] for k in STATES}
            conns: dict[str, list[float]] = {k: [] for k in STATES}
            for n in range(rounds):   # interleaved, order rotated: a load spike hits every state alike
                for state in STATES[n % 3:] + STATES[:n % 3]:
                    _set_state(bed, state)
                    rps[state].append(_h2load(bed.guest, OTHER_IP, h2_requests // 4))
                    conns[state].append(_new_conns(bed.guest, OTHER_IP, 500))
            load_after = os.getloadavg()[0]
            ms = 1000.0
            return {
                "bench": "intercept",
                "requests_per_side": requests,
                "latency_ms": {
                    "intercepted_p50": round(statistics.median(times["intercepted"]) * ms, 3),
                    "direct_p50": round(statistics.median(times["direct"]) * ms, 3),
                    "added_p50": round(statistics.median(diffs) * ms, 3),
                    "added_p99": round(_pct(diffs, 0.99) * ms, 3),
                    "target_added_p50": 1.0,
                },
                "intercepted_req_per_s_one_core": {"runs": intercepted_rps, "best": max(intercepted_rps),
                                                   "target": 5000},
                "not_intercepted_req_per_s": {**rps, **_ratios(rps), "target_ratio": 0.95},
                "not_intercepted_new_conns_per_s": {**conns, **_ratios(conns), "target_ratio": 0.95},
                "load_average_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
                "cores": os.cpu_count(),
            }


def _wait_listening(ns: str, ports: tuple[int, ...], timeout: float = 30.0) -> None:
    """The upstream HAProxy's listeners are up (a client started before them is refused)."""
    deadline = time.monotonic() + timeout
    while True:
        out = sh.run("ss", "-Hltn", ns=ns).stdout
        if all(f":{p} " in out for p in ports):
            return
        assert time.monotonic() < deadline, f"upstream not listening on {ports}:\n{out}"
        time.sleep(0.05)


def _set_state(bed, state: str) -> None:  # type: ignore[no-untyped-def]
    sh.run("nft", "delete", "table", "inet", "natest", ns=bed.host, check=False)
    if state == "nat_chain":
        sh.run("nft", "-f", "-", ns=bed.host, input=NAT_CHAIN_NFT)
    elif state == "rule":
        sh.run("nft", "-f", "-", ns=bed.host, input=STEER_NFT)
        bed.steer(API_IP, PORT)


def _ratios(runs: dict[str, list[float]]) -> dict[str, object]:
    """Per-round ratios (same round: same load): their median and spread (min, max)."""
    out: dict[str, object] = {}
    for name, a, b in (("rule_vs_none", "rule", "none"), ("rule_vs_nat_chain", "rule", "nat_chain"),
                       ("nat_chain_vs_none", "nat_chain", "none")):
        pairs = sorted(x / y for x, y in zip(runs[a], runs[b], strict=True))
        out[name] = {"median": round(statistics.median(pairs), 3), "min": round(pairs[0], 3),
                     "max": round(pairs[-1], 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--h2-requests", type=int, default=50000)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.requests, args.h2_requests, args.rounds)), indent=2))


if __name__ == "__main__":
    main()

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
  sees a connection's first packet only).
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
            rules = RuleSet.parse([{"id": "auth", "domain": "api.test", "ports": [PORT], "transforms": [
                {"op": "set", "header": "Authorization", "value": "Bearer ${secret:K}"}]}])
            await bed.interceptor.load(GUEST_IP, "bench", rules, {"K": "bench-secret-value"})
            bed.steer(API_IP, PORT)
            load_before = os.getloadavg()[0]
            res = sh.run(sh.PYTHON, "-c", PAIRED_CLIENT, str(bed.combined_ca), str(requests), API_IP, OTHER_IP,
                         str(PORT), ns=bed.guest, timeout=600)
            times = json.loads(res.stdout)
            diffs = [a - b for a, b in zip(times["intercepted"], times["direct"], strict=True)]
            intercepted_rps = [_h2load(bed.guest, API_IP, h2_requests) for _ in range(3)]
            with_rule, without_rule, conns_with, conns_without = [], [], [], []
            for _ in range(rounds):   # interleaved: a load spike hits both alike
                sh.run("nft", "delete", "table", "inet", "natest", ns=bed.host)
                without_rule.append(_h2load(bed.guest, OTHER_IP, h2_requests // 4))
                conns_without.append(_new_conns(bed.guest, OTHER_IP, 500))
                sh.run("nft", "-f", "-", ns=bed.host, input=STEER_NFT)
                bed.steer(API_IP, PORT)
                with_rule.append(_h2load(bed.guest, OTHER_IP, h2_requests // 4))
                conns_with.append(_new_conns(bed.guest, OTHER_IP, 500))
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
                "not_intercepted_req_per_s": {"with_steering_rule": with_rule, "without": without_rule,
                                              "ratio_median": round(statistics.median(with_rule)
                                                                    / statistics.median(without_rule), 3),
                                              "pair_ratio_median": round(statistics.median(
                                                  a / b for a, b in zip(with_rule, without_rule, strict=True)), 3),
                                              "target_ratio": 0.95},
                "not_intercepted_new_conns_per_s": {
                    "with_steering_rule": conns_with, "without": conns_without,
                    "pair_ratio_median": round(statistics.median(
                        a / b for a, b in zip(conns_with, conns_without, strict=True)), 3),
                    "target_ratio": 0.95},
                "load_average_1m": {"before": round(load_before, 2), "after": round(load_after, 2)},
                "cores": os.cpu_count(),
            }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--h2-requests", type=int, default=50000)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.requests, args.h2_requests, args.rounds)), indent=2))


if __name__ == "__main__":
    main()

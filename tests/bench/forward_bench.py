"""Forwarding throughput with 2,000 sandboxes' policies loaded, against an
empty ruleset, same run (`python -m tests.bench.forward_bench`).

TCP from one slot netns (through veth0, the host's forward path and our
rules) to a discard server in the internet netns. The baseline deletes the
agent's table and routes the transit CIDR back instead of masquerading.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

from netagent.agent import Agent
from netagent.config import Config
from tests.testbed import sh
from tests.testbed.bed import UPLINK_IP, WEB_IP, Testbed

DISCARD_PORT = 9009
TARGET_RATIO = 0.95   # docs/performance.md: with 2,000 policies >= 0.95 of the empty ruleset's throughput
SERVER = r"""
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", PORT)); s.listen(16); print("ready", flush=True)
def drain(c):
    while c.recv(1 << 20): pass
while True:
    c, _ = s.accept(); threading.Thread(target=drain, args=(c,), daemon=True).start()
""".replace("PORT", str(DISCARD_PORT))
CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
buf = b"x" * (1 << 20); sent = 0; end = time.monotonic() + float(sys.argv[3]); t0 = time.monotonic()
while time.monotonic() < end:
    s.sendall(buf); sent += len(buf)
print(sent * 8 / (time.monotonic() - t0) / 1e9)
"""
POLICY = {"internet": True, "allow_out": ["203.0.113.0/24", "198.51.100.7:443", "192.0.2.128/25"],
          "deny_out": ["192.0.2.0/25", ":25"]}


def gbps(netns: str, seconds: float, runs: int) -> float:
    return statistics.median(float(sh.run(sh.PYTHON, "-c", CLIENT, WEB_IP, str(DISCARD_PORT), str(seconds),
                                          ns=netns, timeout=60).stdout) for _ in range(runs))


async def run(sandboxes: int, seconds: float, runs: int) -> dict:
    bed = Testbed().create()
    server = sh.popen(sh.PYTHON, "-c", SERVER, ns=bed.inet)
    assert server.stdout.readline().strip() == "ready"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=Path(tmp),
                         pool_size=sandboxes, pool_build_concurrency=2, ruleset_check_interval_s=60)
            agent = Agent(cfg)
            await agent.start()
            await agent.wait_pool_ready(timeout=900)
            nets = []
            for i in range(0, sandboxes, 100):
                nets += await asyncio.gather(*(agent.allocate(f"fw-{j}", {"policy": POLICY})
                                               for j in range(i, min(i + 100, sandboxes))))
            agent.config.pool_size = 0  # no refill builds competing for the CPU during the measurement
            while agent._building:
                await asyncio.sleep(0.05)
            netns = nets[-1].netns
            with_rules = await asyncio.to_thread(gbps, netns, seconds, runs)
            await agent.stop()  # the datapath stays; now remove our table for the baseline
            sh.run("nft", "delete", "table", "inet", bed.agent_prefix, ns=bed.host)
            sh.ip("route", "add", str(cfg.transit_cidr), "via", UPLINK_IP, ns=bed.inet)
            empty = await asyncio.to_thread(gbps, netns, seconds, runs)
            # A third point: masquerade alone, to tell NAT's share from the filtering's.
            sh.ip("route", "del", str(cfg.transit_cidr), "via", UPLINK_IP, ns=bed.inet)
            sh.run("nft", "add table ip masq_only; add chain ip masq_only post { type nat hook postrouting "
                   "priority srcnat; }; add rule ip masq_only post oifname up0 masquerade", ns=bed.host)
            nat_only = await asyncio.to_thread(gbps, netns, seconds, runs)
    finally:
        server.kill()
        bed.destroy()
    ratio = with_rules / empty
    return {"sandboxes_with_policies": sandboxes, "with_rules_gbps": round(with_rules, 3),
            "empty_ruleset_gbps": round(empty, 3), "ratio": round(ratio, 3),
            "masquerade_only_gbps": round(nat_only, 3), "ratio_vs_masquerade_only": round(with_rules / nat_only, 3),
            "target": f"ratio >= {TARGET_RATIO} with 2000 sandboxes' policies",
            "meets_target": sandboxes >= 2000 and ratio >= TARGET_RATIO}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sandboxes", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.sandboxes, args.seconds, args.runs)), indent=2))


if __name__ == "__main__":
    main()

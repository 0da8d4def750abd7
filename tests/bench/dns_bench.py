"""DNS proxy benchmark: queries through the agent's proxy (which resolves
upstream and admits each answer into nft before replying) against the same
queries sent straight to the test bed's DNS server from a sandbox without a
domain allowlist, in the same run.

  python -m tests.bench.dns_bench [--count 3000] [--concurrency 64]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from netagent.agent import Agent
from netagent.config import Config
from tests.testbed import sh
from tests.testbed.bed import DNS_IP, LightGuest, Testbed


async def load(guest: LightGuest, server: str, count: int, concurrency: int) -> dict:
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.bench.dns_load", server, str(count),
                                  str(concurrency), ns=guest.name, timeout=120)
    return json.loads(res.stdout)


async def run(count: int, concurrency: int) -> dict:
    bed = Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=Path(tmp),
                         pool_size=2, dns_upstreams=[DNS_IP], dns_ttl_floor_s=5)
            agent = Agent(cfg)
            await agent.start()
            try:
                proxied = LightGuest.attach(bed, await agent.allocate(
                    "dns-bench", {"policy": {"internet": False, "allow_out": ["*.cdn.test"]}}), "p")
                direct = LightGuest.attach(bed, await agent.allocate("dns-direct"), "d")
                out = {}
                for name, guest, server in (("direct", direct, DNS_IP), ("proxy", proxied, "169.254.0.22")):
                    out[name] = {"serial": await load(guest, server, 300, 1),
                                 "concurrent": await load(guest, server, count, concurrency)}
                out["added_latency_ms"] = {
                    p: round(out["proxy"]["serial"][f"{p}_ms"] - out["direct"]["serial"][f"{p}_ms"], 3)
                    for p in ("p50", "p99")}
                out["proxy_stats"] = dict(agent.dns.stats) if agent.dns else {}
                return out
            finally:
                await agent.stop()
    finally:
        bed.destroy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.count, args.concurrency)), indent=2))


if __name__ == "__main__":
    main()

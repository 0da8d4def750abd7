"""Bandwidth and packet-rate limits (issue #14), one run (`python -m tests.bench.limit_bench`):

- one TCP stream of a sandbox limited to 10 Mbit/s (tbf, the agent's limits):
  goodput must be 9-10.5 Mbit/s, both directions;
- ten limited sandboxes at once, each its own 10 Mbit/s;
- an unlimited sandbox before any limit exists, and again once ten limited
  sandboxes exist (idle): the others' qdiscs cost it nothing (>= 0.9);
  and, for information, while the ten stream (on 2 shared cores the eleven
  senders compete for CPU, so that figure says more about the machine);
- the other shape, for comparison: the same 10 Mbit/s as an nftables
  `limit rate over ... drop` (policing) on one unlimited sandbox;
- packet-rate limits: the ten limited sandboxes switched at runtime to 1,000
  packets/s each way (their netagent_pps tables); light guests flood UDP at
  3,000 packets/s out (to a sink in the internet netns) and in (asked of a
  flood server there), one sandbox alone and ten at once. A flood over the
  rate for a span S should pass rate x S + burst: the ratio to that, and the
  rate it implies ((packets - burst) / S), per sandbox.

Goodput is measured by the receiver (bytes it got / time until the last one),
so nothing sitting in a socket buffer is counted.
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
from tests.testbed.bed import WEB_IP, LightGuest, Testbed

SINK_PORT, SOURCE_PORT = 9010, 9011
LIMIT_BPS = 10_000_000
TARGET = (9.0, 10.5)   # Mbit/s of goodput for one stream at a 10 Mbit/s limit
PPS_LIMIT, PPS_OFFERED, PPS_BURST = 1_000, 3_000, 100   # burst: the default, a tenth of a second
PPS_SINK_PORT, PPS_FLOOD_PORT = 9030, 9050   # + sandbox number, in the internet netns
PPS_TARGET = 0.1       # each count within 10% of rate x span + burst
FLOOD = "tests.testbed.udp_flood"
# In the internet netns: a sink counts what it receives and answers the count
# at EOF; a source streams until the peer closes.
SERVERS = r"""
import socket, threading
def serve(port, handle):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept(); threading.Thread(target=handle, args=(c,), daemon=True).start()
def sink(c):
    n = 0
    while b := c.recv(1 << 20): n += len(b)
    c.sendall(str(n).encode()); c.close()
def source(c):
    buf = b"x" * (1 << 16)
    try:
        while True: c.sendall(buf)
    except OSError: pass
threading.Thread(target=serve, args=(SINK, sink), daemon=True).start()
threading.Thread(target=serve, args=(SOURCE, source), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
""".replace("SINK", str(SINK_PORT)).replace("SOURCE", str(SOURCE_PORT))
# In a slot netns: "send": upload for S seconds, the sink's count over the time
# until it answered; "recv": download for S seconds, counted here.
CLIENT = r"""
import socket, sys, time
mode, host, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
if mode == "send":
    s = socket.create_connection((host, SINK), timeout=30)
    buf = b"x" * (1 << 16); t0 = time.monotonic(); end = t0 + seconds
    while time.monotonic() < end: s.sendall(buf)
    s.shutdown(socket.SHUT_WR); got = int(s.recv(64)); elapsed = time.monotonic() - t0
else:
    s = socket.create_connection((host, SOURCE), timeout=30)
    got = 0; t0 = time.monotonic(); end = t0 + seconds
    while time.monotonic() < end: got += len(s.recv(1 << 20))
    elapsed = time.monotonic() - t0
print(got * 8 / elapsed / 1e6)
""".replace("SINK", str(SINK_PORT)).replace("SOURCE", str(SOURCE_PORT))


def start(netns: str, mode: str, seconds: float) -> subprocess.Popen[str]:
    return sh.popen(sh.PYTHON, "-c", CLIENT, mode, WEB_IP, str(seconds), ns=netns)


def mbps(procs: list[subprocess.Popen[str]]) -> list[float]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        out.append(round(float(stdout), 2))
    return out


def within(values: list[float]) -> bool:
    return all(TARGET[0] <= v <= TARGET[1] for v in values)


def policed(got: dict) -> dict:
    """One flood's count against what the limiter should pass."""
    expected = PPS_LIMIT * got["span"] + PPS_BURST
    return {"packets": got["packets"], "span_s": got["span"], "ratio": round(got["packets"] / expected, 3),
            "measured_pps": round((got["packets"] - PPS_BURST) / got["span"])}


def flood_out(bed: Testbed, guests: list[LightGuest], seconds: float) -> list[dict]:
    """Each guest floods its own sink at once."""
    sinks = [bed.start_module(bed.inet, FLOOD, "sink", WEB_IP, str(PPS_SINK_PORT + i)) for i in range(len(guests))]
    senders = [sh.popen(sh.PYTHON, "-m", FLOOD, "send", WEB_IP, str(PPS_SINK_PORT + i), str(seconds),
                        str(PPS_OFFERED), ns=g.name) for i, g in enumerate(guests)]
    for p in senders:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    return [policed(json.loads(sink.stdout.readline())) for sink in sinks]


def flood_in(guests: list[LightGuest], seconds: float) -> list[dict]:
    """Each guest asks its own flood server at once."""
    askers = [sh.popen(sh.PYTHON, "-m", FLOOD, "ask", WEB_IP, str(PPS_FLOOD_PORT + i), str(seconds),
                       str(PPS_OFFERED), ns=g.name) for i, g in enumerate(guests)]
    out = []
    for p in askers:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        out.append(policed(json.loads(stdout)))
    return out


def pps_accuracy(bed: Testbed, guests: list[LightGuest], seconds: float) -> dict:
    for i in range(len(guests)):
        bed.start_module(bed.inet, FLOOD, "flood", WEB_IP, str(PPS_FLOOD_PORT + i))
    one_out, one_in = flood_out(bed, guests[:1], seconds)[0], flood_in(guests[:1], seconds)[0]
    ten_out, ten_in = flood_out(bed, guests, seconds), flood_in(guests, seconds)
    ratios = [r["ratio"] for r in [one_out, one_in, *ten_out, *ten_in]]
    return {"pps_limit": PPS_LIMIT, "pps_offered": PPS_OFFERED, "pps_burst": PPS_BURST,
            "pps_one_out": one_out, "pps_one_in": one_in,
            "pps_ten_out_measured": [r["measured_pps"] for r in ten_out],
            "pps_ten_in_measured": [r["measured_pps"] for r in ten_in],
            "pps_ratios_min_max": [min(ratios), max(ratios)],
            "pps_meets_target": all(abs(r - 1) <= PPS_TARGET for r in ratios)}


async def run(seconds: float) -> dict:
    bed = Testbed().create()
    servers = sh.popen(sh.PYTHON, "-c", SERVERS, ns=bed.inet)
    assert servers.stdout.readline().strip() == "ready"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=Path(tmp),
                         pool_size=12, pool_build_concurrency=2, ruleset_check_interval_s=60)
            agent = Agent(cfg)
            await agent.start()
            await agent.wait_pool_ready(timeout=300)
            free = await agent.allocate("free")
            agent.reconfigure(agent.config.replace(pool_size=0))
            while agent._building:
                await asyncio.sleep(0.05)
            before = await asyncio.to_thread(mbps, [start(free.netns, "send", seconds)])
            limits = {"egress_bps": LIMIT_BPS, "ingress_bps": LIMIT_BPS}
            limited = [await agent.allocate(f"lim-{i}", {"limits": limits}) for i in range(10)]
            one_up = await asyncio.to_thread(mbps, [start(limited[0].netns, "send", seconds)])
            one_down = await asyncio.to_thread(mbps, [start(limited[0].netns, "recv", seconds)])
            alone = await asyncio.to_thread(mbps, [start(free.netns, "send", seconds)])
            procs = [start(n.netns, "send", seconds) for n in limited] + [start(free.netns, "send", seconds)]
            together = await asyncio.to_thread(mbps, procs)
            ten, free_during = together[:10], together[10]
            # policing for comparison: the same rate as an nft limit on the unlimited sandbox's veth
            veth = agent.plan.host_veth(free.slot)
            sh.run("nft", f"add table inet policing; add chain inet policing f {{ type filter hook forward "
                   f"priority -5; }}; add rule inet policing f iifname \"{veth}\" limit rate over "
                   f"{LIMIT_BPS // 8 // 1000} kbytes/second burst 16 kbytes drop", ns=bed.host)
            policed = await asyncio.to_thread(mbps, [start(free.netns, "send", seconds)])
            sh.run("nft", "delete table inet policing", ns=bed.host)
            for n in limited:   # packet rates only now, changed at runtime
                await agent.set_limits(n.sandbox_id, {"egress_pps": PPS_LIMIT, "ingress_pps": PPS_LIMIT})
            guests = [LightGuest.attach(bed, n, chr(ord("a") + i)) for i, n in enumerate(limited)]
            pps = await asyncio.to_thread(pps_accuracy, bed, guests, seconds)
            await agent.stop()
    finally:
        servers.kill()
        bed.destroy()
    keeps = alone[0] >= 0.9 * before[0]
    return {"limit_mbps": LIMIT_BPS / 1e6, "one_stream_up_mbps": one_up[0], "one_stream_down_mbps": one_down[0],
            "ten_at_once_mbps": ten, "ten_median_mbps": statistics.median(ten),
            "unlimited_before_limits_mbps": before[0], "unlimited_with_ten_limited_idle_mbps": alone[0],
            "unlimited_ratio": round(alone[0] / before[0], 3), "unlimited_while_ten_stream_mbps": free_during,
            "nft_policing_one_stream_mbps": policed[0], **pps, "load_average": os.getloadavg(),
            "target": f"{TARGET[0]}-{TARGET[1]} Mbit/s per stream at 10 Mbit/s (one, and each of ten at once); "
                      "an unlimited sandbox >= 0.9 of its throughput before any limit existed",
            "meets_target": within(one_up + one_down + ten) and keeps}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds)), indent=2))


if __name__ == "__main__":
    main()

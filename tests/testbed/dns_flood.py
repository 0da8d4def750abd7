"""One sandbox floods the gateway resolver while two others keep asking: the
procedure shared by the datapath test (what must hold) and the DNS flood bench
(how fast the others stay).

The clients run in the slot netns and send to the proxy's address as the
slot's DNAT would (same source, the sandbox IP; same host path): the test
bed's frame relay, a Python process per guest, would add its own scheduling
delay and cap the flood's rate.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import subprocess

from tests.testbed import sh

FLOOD_QUERIES = 10_000


def start_client(bed, netns: str, *args: str) -> subprocess.Popen[str]:
    """A dns_client that has started and waits for its go line (killed with the bed)."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, sh.PYTHON, "-m", "tests.testbed.dns_client", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=sh.REPO)
    bed.procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def finish(proc: subprocess.Popen[str]) -> dict:
    out, _ = proc.communicate(timeout=60)
    return json.loads(out)


def proxy_of(agent, net) -> str:
    return f"{ipaddress.IPv4Address(str(net.sandbox_ip)) - 1}:{agent.config.dns_proxy_port}"


async def probe_others(bed, agent, flooder, others, during_flood: bool) -> tuple[list[dict], dict | None]:
    """Each of `others` asks every 5 ms for 2 s (cache hits: the test bed's
    upstream is a Python process whose own wake-ups would be measured too);
    with `during_flood`, the flooder sends FLOOD_QUERIES cache misses at once,
    0.3 s into the probes."""
    probes = [await asyncio.to_thread(start_client, bed, n.netns, "probe", proxy_of(agent, n), "400", "5",
                                      "public.test") for n in others]
    flood = None
    if during_flood:
        flood = await asyncio.to_thread(start_client, bed, flooder.netns, "flood", proxy_of(agent, flooder),
                                        str(FLOOD_QUERIES))
    for p in probes:
        p.stdin.write("go\n")
        p.stdin.flush()
    if flood:
        await asyncio.sleep(0.3)
        flood.stdin.write("go\n")
        flood.stdin.flush()
    results = [await asyncio.to_thread(finish, p) for p in probes]
    return results, (await asyncio.to_thread(finish, flood) if flood else None)

"""MSS clamping: a guest at MTU 1500 behind an uplink with a smaller MTU.

Over veths alone a large download passes anyway (GSO hides MTU limits), so the
uplink goes through a router netns with a 1400-byte link that drops the ICMP
"fragmentation needed" it would send (tests/testbed/router.py).
"""
from __future__ import annotations

import asyncio
import hashlib
import json

from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, WEB_IP, LightGuest
from tests.testbed.router import insert_router
from tests.testbed.servers import payload

NARROW_MTU = 1400
SYN_PORT = 7400


async def test_guest_syn_leaves_with_an_mss_that_fits_the_uplink(bed, agent):
    insert_router(bed, NARROW_MTU)
    guest = LightGuest.attach(bed, await agent.allocate("mss-syn"), "a")
    server = bed.start_module(bed.inet, "tests.testbed.syn_server", WEB_IP, str(SYN_PORT))
    assert server.stdout is not None
    # The guest announces 1460 (its eth0 is 1500); the far side must see ≤ 1400 - 40.
    await asyncio.to_thread(bed.fetch, guest.name, f"tcp://{WEB_IP}:{SYN_PORT}", 3.0)
    seen = json.loads(await asyncio.to_thread(server.stdout.readline))
    assert seen["mss"] is not None and seen["mss"] <= NARROW_MTU - 40, seen


async def test_20_mib_download_through_a_narrow_icmp_filtering_path(bed, agent):
    router = insert_router(bed, NARROW_MTU)
    guest = LightGuest.attach(bed, await agent.allocate("mss-dl"), "a")
    size = 20 << 20
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.download",
                                  f"http://{WEB_IP}:{HTTP_PORT}/bytes?n={size}", "--stall", "5",
                                  ns=guest.name, timeout=120)
    got = json.loads(res.stdout)
    assert got.get("bytes") == size and got.get("sha256") == hashlib.sha256(payload(size)).hexdigest(), got
    # The path really is a black hole for oversized packets: the router dropped
    # no frag-needed only because none was needed.
    counter = sh.run("nft", "list", "table", "ip", "blackhole", ns=router).stdout
    assert "counter packets 0 " in counter, counter

"""Denied flows become FLOW_DENIED events and log lines, sampled per sandbox."""
from __future__ import annotations

import asyncio

from tests.datapath.helpers import counter_packets
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, METADATA_IP, WEB2_IP, LightGuest

FLOOD = r"""
import socket, sys
for i in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", (sys.argv[1], 9000 + i % 10))
"""


async def denied_events(agent, sandbox_id: str, until, timeout: float = 5.0) -> list[dict]:  # type: ignore[no-untyped-def]
    """FLOW_DENIED events of the sandbox until `until(found)` holds, or whatever
    came within `timeout` (asyncio.timeout: wait_for can swallow a cancel)."""
    found: list[dict] = []
    try:
        async with asyncio.timeout(timeout):
            async for ev in agent.events.watch(0, {sandbox_id}):
                if ev.type == "flow_denied":
                    found.append(ev.data["denied"])
                    if until(found):
                        break
    except TimeoutError:
        pass
    return found


async def test_denied_flows_are_events_with_reason_and_destination(bed, agent):
    net = await agent.allocate("deny-1", {"policy": {"internet": True, "deny_out": [WEB2_IP]}})
    guest = await asyncio.to_thread(LightGuest.attach, bed, net, "d")
    for url in (f"http://{METADATA_IP}:{HTTP_PORT}/", f"http://{WEB2_IP}:{HTTP_PORT}/"):
        ok, _ = await asyncio.to_thread(guest.fetch, url, 1.0)
        assert not ok
    # A SYN retransmit is a second always_deny event: wait for both reasons.
    events = await denied_events(agent, "deny-1", until=lambda found: {e["reason"] for e in found} >= {
        "always_deny", "policy_deny"})
    seen = {(e["reason"], e["destination"], e["protocol"], e["port"]) for e in events}
    assert ("always_deny", METADATA_IP, "tcp", HTTP_PORT) in seen, events
    assert ("policy_deny", WEB2_IP, "tcp", HTTP_PORT) in seen, events
    guest.stop()


async def test_a_flood_of_denied_packets_is_sampled_but_every_packet_is_dropped(bed, agent):
    net = await agent.allocate("flood-1")
    guest = await asyncio.to_thread(LightGuest.attach, bed, net, "f")
    before = counter_packets(bed.host, bed.agent_prefix, "drop_always_deny")
    await asyncio.to_thread(sh.run, sh.PYTHON, "-c", FLOOD, METADATA_IP, "300", ns=guest.name)
    await asyncio.sleep(0.5)
    events = await denied_events(agent, "flood-1", until=lambda found: False, timeout=1.0)
    dropped = counter_packets(bed.host, bed.agent_prefix, "drop_always_deny") - before
    assert dropped == 300
    assert 1 <= len(events) <= 20, len(events)   # burst 10, then 5/s
    assert all(e["reason"] == "always_deny" and e["protocol"] == "udp" for e in events)
    guest.stop()

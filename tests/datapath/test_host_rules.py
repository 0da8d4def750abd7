"""The host table with real packets and a real kernel listing: a fixed rule
count, the host-wide always_allow exceptions, and the host's own IPv6 drop."""
from __future__ import annotations

import json
from collections import Counter

from netagent.agent import Agent
from tests.conftest import agent_config
from tests.datapath.helpers import counter_packets
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, METADATA_IP, RFC1918_IP, WEB_IP, LightGuest


def rules_per_chain(ns: str, table: str) -> Counter[str]:
    out = sh.run("nft", "-j", "list", "table", "inet", table, ns=ns).stdout
    return Counter(o["rule"]["chain"] for o in json.loads(out)["nftables"] if "rule" in o)


async def test_host_ruleset_has_a_fixed_rule_count(bed, tmp_path):
    """Sandboxes, policies and exposed ports are elements, never rules."""
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=0))
    await agent.start()
    try:
        empty = rules_per_chain(bed.host, bed.agent_prefix)
        assert sum(empty.values()) > 30  # the listing was read, not an empty table
        policies = [{"internet": False, "allow_out": ["203.0.113.0/24", f"{WEB_IP}:7000"]},
                    {"internet": True, "deny_out": ["192.0.2.0/24", ":7000"]},
                    {"allow_out": ["allowed.test", "*.cdn.test"]},
                    {}]
        for i in range(8):
            await agent.allocate(f"count-{i}", {"policy": policies[i % len(policies)]})
            await agent.expose(f"count-{i}", 8080)
            await agent.expose(f"count-{i}", 53, "udp")
        assert len(agent.allocations) == 8
        assert rules_per_chain(bed.host, bed.agent_prefix) == empty
    finally:
        await agent.stop()


async def test_always_allow_opens_a_denied_range_subject_to_the_egress_mode(bed, tmp_path):
    """A host-wide exception opens one always-denied address (here the RFC1918
    service) to internet-on sandboxes only; the rest of always_deny stays shut."""
    agent = Agent(agent_config(bed, tmp_path / "state", always_allow=[f"{RFC1918_IP}/32"]))
    await agent.start()
    try:
        on = LightGuest.attach(bed, await agent.allocate("allow-on"), "a")
        off = LightGuest.attach(bed, await agent.allocate("allow-off", {"policy": {"internet": False}}), "b")
        ok, body = on.fetch(f"http://{RFC1918_IP}:{HTTP_PORT}/")
        assert ok, f"the always_allow exception did not open {RFC1918_IP}: {body}"
        assert json.loads(body)["server"] == RFC1918_IP

        blocked = counter_packets(bed.host, bed.agent_prefix, "drop_egress_blocked")
        ok, body = off.fetch(f"http://{RFC1918_IP}:{HTTP_PORT}/", timeout=1)
        assert not ok and "timed out" in body, f"internet off, yet reached {RFC1918_IP}: {body}"
        assert counter_packets(bed.host, bed.agent_prefix, "drop_egress_blocked") > blocked

        denied = counter_packets(bed.host, bed.agent_prefix, "drop_always_deny")
        ok, body = on.fetch(f"http://{METADATA_IP}:{HTTP_PORT}/", timeout=1)
        assert not ok and "timed out" in body, f"metadata reached: {body}"
        assert counter_packets(bed.host, bed.agent_prefix, "drop_always_deny") > denied
    finally:
        await agent.stop()


# Count UDP datagrams to ADDR:PORT for SECONDS (run in the internet netns).
_UDP_COUNT = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(0.1)
n, end = 0, time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        s.recv(2048); n += 1
    except socket.timeout:
        pass
print(n, flush=True)
"""

# Put IPv6/UDP frames on the slot's veth0 (run in the slot netns), as a slot
# whose own defences failed would: straight to the host veth's MAC.
_SEND_V6 = r"""
import sys
from scapy.all import UDP, Ether, IPv6, Raw, conf, sendp
conf.verb = 0
src_mac, dst_mac, src, dst, port = sys.argv[1:6]
sendp(Ether(src=src_mac, dst=dst_mac) / IPv6(src=src, dst=dst) / UDP(sport=4000, dport=int(port)) / Raw(b"v6"),
      iface="veth0", count=5)
"""
V6_HOST, V6_INET, V6_SANDBOX, V6_PORT = "2001:db8:64::2", "2001:db8:64::1", "2001:db8:65::5", 9000


def link_mac(ns: str, ifname: str) -> str:
    return json.loads(sh.ip("-j", "link", "show", "dev", ifname, ns=ns).stdout)[0]["address"]


async def test_the_host_drops_ipv6_from_a_slot_itself(bed, agent):
    """Even with IPv6 forwarding and a v6 uplink on the host, IPv6 that gets
    past a slot is dropped by the host table (drop_ipv6), never forwarded."""
    sh.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", ns=bed.host)
    sh.ip("addr", "add", f"{V6_HOST}/64", "dev", "up0", "nodad", ns=bed.host)
    sh.ip("addr", "add", f"{V6_INET}/64", "dev", "wan0", "nodad", ns=bed.inet)
    sh.ip("route", "add", "2001:db8:65::/64", "via", V6_HOST, ns=bed.inet)
    net = await agent.allocate("v6-host")
    listener = sh.popen(sh.PYTHON, "-c", _UDP_COUNT, V6_INET, str(V6_PORT), "3", ns=bed.inet)
    try:
        assert listener.stdout.readline().strip() == "ready"
        # Control: the host forwards and the listener counts IPv6 datagrams.
        sh.run(sh.PYTHON, "-c", "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
               f"[s.sendto(b'c', ('{V6_INET}', {V6_PORT})) for _ in range(2)]", ns=bed.host)
        before = counter_packets(bed.host, bed.agent_prefix, "drop_ipv6")
        sh.run(sh.PYTHON, "-c", _SEND_V6, link_mac(net.netns, "veth0"), link_mac(bed.host, net.host_veth),
               V6_SANDBOX, V6_INET, str(V6_PORT), ns=net.netns)
        out, _ = listener.communicate(timeout=10)
    finally:
        listener.kill()
        listener.wait(5)
    assert int(out.split()[-1]) == 2, f"only the host's 2 control datagrams may arrive, got {out.split()[-1]}"
    assert counter_packets(bed.host, bed.agent_prefix, "drop_ipv6") - before >= 5

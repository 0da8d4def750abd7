"""Frames crafted with scapy inside the guest: spoofed IP, spoofed MAC, ARP
claims and IPv6 die at the tap, before any routing."""
from __future__ import annotations

import json

from tests.datapath.helpers import counter_packets
from tests.testbed import sh
from tests.testbed.bed import ECHO_PORT, WEB_IP, LightGuest

CRAFT = r"""
import sys
from scapy.all import ARP, ICMPv6EchoRequest, IP, IPv6, TCP, Ether, sendp, conf
conf.verb = 0
guest_mac, tap_mac, guest_ip, other_ip, dst, port = sys.argv[1:7]
port = int(port)
BCAST = "ff:ff:ff:ff:ff:ff"
frames = {
    "spoofed_ip": Ether(src=guest_mac, dst=tap_mac) / IP(src=other_ip, dst=dst) / TCP(dport=port, flags="S"),
    "spoofed_mac": Ether(src="02:aa:bb:cc:dd:ee", dst=tap_mac) / IP(src=guest_ip, dst=dst) / TCP(dport=port, flags="S"),
    "arp_other_ip": Ether(src=guest_mac, dst=BCAST) / ARP(op=2, hwsrc=guest_mac, psrc=other_ip, pdst=other_ip),
    "arp_other_mac": Ether(src=guest_mac, dst=BCAST) / ARP(op=2, hwsrc="02:aa:bb:cc:dd:ee", psrc=guest_ip,
                                                           pdst=guest_ip),
    "ipv6": Ether(src=guest_mac, dst="33:33:00:00:00:01") / IPv6(src="fe80::1", dst="ff02::1") / ICMPv6EchoRequest(),
}
for frame in frames.values():
    sendp(frame, iface="eth0", count=5)
"""


def guard_counters(netns: str) -> dict[str, int]:
    out = sh.run("nft", "-j", "list", "counters", "table", "netdev", "netagent_guard", ns=netns).stdout
    return {o["counter"]["name"]: o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o}


async def test_crafted_spoofing_and_ipv6_die_at_the_tap(bed, agent):
    net = await agent.allocate("craft-1")
    guest = LightGuest.attach(bed, net, "a")
    other = str(agent.plan.slot(net.slot + 1).sandbox_ip)
    before = guard_counters(net.netns)
    host_before = {n: counter_packets(bed.host, bed.agent_prefix, n) for n in ("drop_spoof", "drop_ipv6")}
    tap_mac = agent.config.guest.tap_mac
    sh.run(sh.PYTHON, "-c", CRAFT, net.guest_mac, tap_mac, net.guest_ip, other, WEB_IP, str(ECHO_PORT),
           ns=guest.name)
    after = guard_counters(net.netns)
    assert after["spoofed_ip"] - before["spoofed_ip"] >= 5
    assert after["spoofed_mac"] - before["spoofed_mac"] >= 5
    assert after["arp_spoof"] - before["arp_spoof"] >= 10
    assert after["not_ipv4"] - before["not_ipv4"] >= 5
    # Nothing of it got as far as the host.
    assert {n: counter_packets(bed.host, bed.agent_prefix, n) for n in host_before} == host_before
    # The slot did not learn the claimed neighbours.
    neigh = sh.run("ip", "neigh", "show", ns=net.netns).stdout
    assert "02:aa:bb:cc:dd:ee" not in neigh and other not in neigh
    # The guest's own traffic still flows.
    ok, body = guest.fetch(f"tcp://{WEB_IP}:{ECHO_PORT}")
    assert ok and body == "ping"

"""The host table with real packets and a real kernel listing: a fixed rule
count, the host-wide always_allow exceptions, and the host's own IPv6 drop."""
from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
from collections import Counter
from collections.abc import Callable

from netagent.agent import Agent
from tests.conftest import agent_config
from tests.datapath.helpers import counter_packets
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, INET_IP, METADATA_IP, RFC1918_IP, UPLINK_IP, WEB_IP, LightGuest, wait_until


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


# Count UDP datagrams to ADDR:PORT until stdin closes (a line with the count at
# each one, then "total N"); with GROUP IFNAME..., also join that multicast
# group on those interfaces.
_UDP_COUNT = r"""
import select, socket, struct, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
for ifname in sys.argv[4:]:
    ifindex = socket.if_nametoindex(ifname)
    mreqn = socket.inet_aton(sys.argv[3]) + socket.inet_aton("0.0.0.0") + struct.pack("=i", ifindex)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
print("ready", flush=True)
n = 0
while True:
    readable, _, _ = select.select([s, sys.stdin], [], [])
    if s in readable:
        s.recv(2048); n += 1
        print(n, flush=True)
    elif not sys.stdin.read(1):
        break
print("total", n, flush=True)
"""

# Put 5 UDP frames (IPv4 or IPv6 by the destination; TCP SYNs with a 7th
# argument "syn") on IFACE, addressed by hand: from inside a slot, as a slot
# whose own defences failed would send them.
_SEND_UDP = r"""
import sys
from scapy.all import IP, TCP, UDP, Ether, IPv6, Raw, conf, sendp
conf.verb = 0
iface, src_mac, dst_mac, src, dst, port = sys.argv[1:7]
l3 = IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)
l4 = TCP(sport=4000, dport=int(port), flags="S") if sys.argv[7:] == ["syn"] else UDP(sport=4000, dport=int(port))
sendp(Ether(src=src_mac, dst=dst_mac) / l3 / l4 / Raw(b"x"), iface=iface, count=5)
"""
V6_HOST, V6_INET, V6_SANDBOX, V6_PORT = "2001:db8:64::2", "2001:db8:64::1", "2001:db8:65::5", 9000


@contextlib.contextmanager
def udp_counter(ns: str, *args: str):  # type: ignore[no-untyped-def]
    """A _UDP_COUNT listener in ns; yields count(controls, settled): it waits
    until the control datagrams arrived and settled() holds (the crafted frames'
    drop counter reached what was sent: the kernel is done with them), then
    stops the listener and returns the total. A quiet or a busy machine only
    changes how long that takes, not what is counted."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sh.PYTHON, "-c", _UDP_COUNT, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, bufsize=0)
    out = bytearray()

    def count(controls: int, settled: Callable[[], bool]) -> int:
        while len(out.split()) < controls:     # one line per datagram so far (unbuffered reads)
            readable, _, _ = select.select([proc.stdout], [], [], 15)
            assert readable, f"only {len(out.split())} of the {controls} control datagrams arrived in 15 s"
            out.extend(os.read(proc.stdout.fileno(), 4096))
        assert wait_until(settled, timeout=15), "the crafted frames were never counted as dropped"
        return int(proc.communicate(timeout=15)[0].split()[-1])  # closes stdin: the listener stops
    try:
        assert proc.stdout.readline().strip() == b"ready"
        yield count
    finally:
        proc.kill()
        proc.wait(5)


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
    with udp_counter(bed.inet, V6_INET, str(V6_PORT)) as received:
        # Control: the host forwards and the listener counts IPv6 datagrams.
        sh.run(sh.PYTHON, "-c", "import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); "
               f"[s.sendto(b'c', ('{V6_INET}', {V6_PORT})) for _ in range(2)]", ns=bed.host)
        before = counter_packets(bed.host, bed.agent_prefix, "drop_ipv6")
        sh.run(sh.PYTHON, "-c", _SEND_UDP, "veth0", link_mac(net.netns, "veth0"), link_mac(bed.host, net.host_veth),
               V6_SANDBOX, V6_INET, str(V6_PORT), ns=net.netns)
        arrived = received(2, lambda: counter_packets(bed.host, bed.agent_prefix, "drop_ipv6") - before >= 5)
    assert arrived == 2, f"only the host's 2 control datagrams may arrive, got {arrived}"


GROUP, GROUP_MAC, LOCAL_PORT = "239.1.2.3", "01:00:5e:01:02:03", 9100


async def test_a_slot_cannot_reach_host_loopback_or_multicast_listeners(bed, agent):
    """127/8 and 224/4 never leave a slot: the guest's frames die in the slot
    (martian / unrouted multicast). Frames put on the slot's veth reach the
    host's input (a group the host joined on that veth; 127.0.0.1 once
    route_localnet is on, as kube-proxy sets it), where sandbox_to_host must
    drop them (drop_to_host)."""
    net = await agent.allocate("local-1")
    guest = LightGuest.attach(bed, net, "a")
    slot_mac, host_mac, tap_mac = link_mac(net.netns, "veth0"), link_mac(bed.host, net.host_veth), \
        agent.config.guest.tap_mac
    send = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "

    def from_slot_and_guest(dst: str, slot_dst_mac: str, guest_dst_mac: str) -> None:
        sh.run(sh.PYTHON, "-c", _SEND_UDP, "veth0", slot_mac, slot_dst_mac, net.sandbox_ip, dst, str(LOCAL_PORT),
               ns=net.netns)
        sh.run(sh.PYTHON, "-c", _SEND_UDP, "eth0", net.guest_mac, guest_dst_mac, net.guest_ip, dst, str(LOCAL_PORT),
               ns=guest.name)
    with udp_counter(bed.host, "0.0.0.0", str(LOCAL_PORT), GROUP, net.host_veth, "up0") as received:
        before = counter_packets(bed.host, bed.agent_prefix, "drop_to_host")
        # Multicast. Control: the group, sent from the internet side of the uplink.
        sh.run(sh.PYTHON, "-c", send + f"s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, "
               f"socket.inet_aton('{INET_IP}')); s.sendto(b'c', ('{GROUP}', {LOCAL_PORT}))", ns=bed.inet)
        from_slot_and_guest(GROUP, GROUP_MAC, GROUP_MAC)
        # Loopback (route_localnet also makes the kernel drop the multicast
        # above before any hook, so it comes second). Control: from the host.
        sh.run("sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", ns=bed.host)
        sh.run(sh.PYTHON, "-c", send + f"s.sendto(b'c', ('127.0.0.1', {LOCAL_PORT}))", ns=bed.host)
        from_slot_and_guest("127.0.0.1", host_mac, tap_mac)
        arrived = received(2, lambda: counter_packets(bed.host, bed.agent_prefix, "drop_to_host") - before >= 10)
    assert arrived == 2, f"only the 2 control datagrams may arrive, got {arrived}"


SPOOF_PORT, SPOOF_EDGE_PORT = 9200, 8443
# Counts, per ingress interface, what the host's filters let through: base
# chains after the agent's (priority filter + 20) see only accepted packets.
_ACCEPTED_PROBE = """table inet spoofprobe {{
    chain forward {{
        type filter hook forward priority filter + 20;
        iifname "{a}" udp dport {port} counter
        iifname "{b}" udp dport {port} counter
    }}
    chain input {{
        type filter hook input priority filter + 20;
        iifname "{a}" tcp dport {edge} counter
        iifname "{b}" tcp dport {edge} counter
    }}
}}
"""


def accepted(ns: str) -> dict[tuple[str, str], int]:
    """(hook, iifname) -> packets the spoofprobe table counted."""
    out = json.loads(sh.run("nft", "-j", "list", "table", "inet", "spoofprobe", ns=ns).stdout)["nftables"]
    counts: dict[tuple[str, str], int] = {}
    for rule in (o["rule"] for o in out if "rule" in o):
        ifname = next(e["match"]["right"] for e in rule["expr"] if "match" in e
                      and e["match"]["left"] == {"meta": {"key": "iifname"}})
        counts[rule["chain"], ifname] = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return counts


async def test_the_host_drops_another_slots_source_that_got_past_the_tap_guard(bed, tmp_path):
    """The host's anti-spoofing rule (iifname . ip saddr != @sbx_src, in
    from_sandbox and in to_edge) is the second layer behind the tap guard:
    frames put on a slot's veth from inside the slot netns, past the guard, with
    the source of a slot whose internet is on, die at the host (drop_spoof) on
    the forward path and on the way to an edge address; the same frames from
    the owner of that source pass."""
    agent = Agent(agent_config(bed, tmp_path / "state", edge_addresses=[f"{UPLINK_IP}:{SPOOF_EDGE_PORT}"]))
    await agent.start()
    try:
        owner = await agent.allocate("spoof-owner", {"policy": {"internet": True}})
        thief = await agent.allocate("spoof-thief", {"policy": {"internet": False}})
        sh.run("nft", "-f", "-", ns=bed.host, input=_ACCEPTED_PROBE.format(
            a=owner.host_veth, b=thief.host_veth, port=SPOOF_PORT, edge=SPOOF_EDGE_PORT))
        before = counter_packets(bed.host, bed.agent_prefix, "drop_spoof")
        for net in (owner, thief):        # both claim the owner's address
            frame = ["veth0", link_mac(net.netns, "veth0"), link_mac(bed.host, net.host_veth), owner.sandbox_ip]
            sh.run(sh.PYTHON, "-c", _SEND_UDP, *frame, WEB_IP, str(SPOOF_PORT), ns=net.netns)
            sh.run(sh.PYTHON, "-c", _SEND_UDP, *frame, UPLINK_IP, str(SPOOF_EDGE_PORT), "syn", ns=net.netns)

        def thief_frames_decided() -> bool:   # each of the thief's 10 frames dropped as spoofed or let through
            got = accepted(bed.host)
            return (counter_packets(bed.host, bed.agent_prefix, "drop_spoof") - before
                    + got["forward", thief.host_veth] + got["input", thief.host_veth] >= 10)
        assert wait_until(thief_frames_decided, timeout=15)
        assert wait_until(lambda: accepted(bed.host)["forward", owner.host_veth] >= 5
                          and accepted(bed.host)["input", owner.host_veth] >= 5, timeout=15), accepted(bed.host)
        got = accepted(bed.host)
        assert got["forward", thief.host_veth] == 0 and got["input", thief.host_veth] == 0, got
        assert counter_packets(bed.host, bed.agent_prefix, "drop_spoof") - before == 10
    finally:
        sh.run("nft", "delete", "table", "inet", "spoofprobe", ns=bed.host, check=False)
        await agent.stop()

"""Real packets through real slots: egress, ingress DNAT, isolation, spoofing."""
from __future__ import annotations

import json
import time

from tests.datapath.helpers import counter_packets
from tests.testbed import sh
from tests.testbed.bed import (
    CGNAT_IP,
    ECHO_PORT,
    HOST_SERVICE_PORT,
    HTTP_PORT,
    INET_IP,
    METADATA_IP,
    RFC1918_IP,
    UPLINK_IP,
    WEB_IP,
    LightGuest,
)


async def test_guest_reaches_internet_with_uplink_address(bed, agent):
    net = await agent.allocate("web-1")
    guest = LightGuest.attach(bed, net, "a")
    ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")
    assert ok, body
    assert json.loads(body)["client"] == UPLINK_IP


async def test_exposed_port_reachable_from_internet_and_host(bed, agent):
    net = await agent.allocate("srv-1")
    guest = LightGuest.attach(bed, net, "a")
    bed.start_server(guest.name, "--http", "8080")
    host_port = await agent.expose("srv-1", 8080)
    lo, hi = agent.config.host_port_range
    assert lo <= host_port <= hi

    ok, body = bed.fetch(bed.inet, f"http://{UPLINK_IP}:{host_port}/")
    assert ok, body
    seen = json.loads(body)
    assert seen["server"] == net.guest_ip
    assert seen["client"] == "198.51.100.1"  # the client address is preserved

    ok, body = bed.fetch(bed.host, f"http://{UPLINK_IP}:{host_port}/")
    assert ok, body

    assert await agent.unexpose("srv-1", 8080)
    ok, _ = bed.fetch(bed.inet, f"http://{UPLINK_IP}:{host_port}/", timeout=1)
    assert not ok


async def test_guest_cannot_reach_host_metadata_private_or_other_sandbox(bed, agent):
    net_a = await agent.allocate("iso-a")
    a = LightGuest.attach(bed, net_a, "a")
    net_b = await agent.allocate("iso-b")
    b = LightGuest.attach(bed, net_b, "b")
    bed.start_server(b.name, "--http", "8080")
    b_port = await agent.expose("iso-b", 8080)
    b_host_ip = str(agent.plan.slot(net_b.slot).host_ip)
    bed.start_server(net_a.netns, "--http", "8080")  # a listener in a's slot netns: its gateway

    # Controls: every target answers when asked from a place that may reach it,
    # so a failure below is the agent's rules, never a missing listener.
    controls = [(bed.host, f"http://{METADATA_IP}:{HTTP_PORT}/"), (bed.host, f"http://{RFC1918_IP}:{HTTP_PORT}/"),
                (bed.host, f"http://{CGNAT_IP}:{HTTP_PORT}/"), (bed.host, f"http://{UPLINK_IP}:{HOST_SERVICE_PORT}/"),
                (bed.host, f"http://{b_host_ip}:{HOST_SERVICE_PORT}/"), (bed.host, f"http://{net_b.sandbox_ip}:8080/"),
                (bed.inet, f"http://{UPLINK_IP}:{b_port}/"), (net_a.netns, f"http://{net_a.gateway_ip}:8080/")]
    for ns, url in controls:
        ok, body = bed.fetch(ns, url)
        assert ok, f"control {url} from {ns}: {body}"

    forbidden = [  # url, the host counter that must rise (None: dropped inside the slot)
        (f"http://{METADATA_IP}:{HTTP_PORT}/", "drop_always_deny"),
        (f"http://{RFC1918_IP}:{HTTP_PORT}/", "drop_always_deny"),
        (f"http://{CGNAT_IP}:{HTTP_PORT}/", "drop_always_deny"),
        (f"http://{net_b.sandbox_ip}:8080/", "drop_always_deny"),       # another sandbox directly
        (f"http://{UPLINK_IP}:{HOST_SERVICE_PORT}/", "drop_to_host"),   # a host service
        (f"http://{b_host_ip}:{HOST_SERVICE_PORT}/", "drop_to_host"),   # the same, on a slot's host address
        (f"http://{UPLINK_IP}:{b_port}/", "drop_to_host"),              # another sandbox's exposed port
        (f"http://{net_a.gateway_ip}:8080/", None),                      # own gateway: no services
    ]
    for url, counter in forbidden:
        before = counter and counter_packets(bed.host, bed.agent_prefix, counter)
        ok, body = a.fetch(url, timeout=1)
        assert not ok, f"guest reached {url}: {body}"
        assert "timed out" in body, f"{url}: expected a silent drop, got {body}"
        if counter:
            assert counter_packets(bed.host, bed.agent_prefix, counter) > before, f"{url}: {counter} did not rise"
    ok, body = a.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")
    assert ok, body


def guard_counter(netns: str, name: str) -> int:
    """A named counter of the slot's tap guard (table netdev netagent_guard)."""
    out = sh.run("nft", "-j", "list", "counter", "netdev", "netagent_guard", name, ns=netns).stdout
    return next(o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o)


async def test_spoofed_source_address_or_mac_goes_nowhere(bed, agent):
    net = await agent.allocate("spoof-1")
    guest = LightGuest.attach(bed, net, "a")
    url = f"tcp://{WEB_IP}:{ECHO_PORT}"
    ok, body = guest.fetch(url)
    assert ok and body == "ping"

    # Pretend to be another sandbox: its sandbox IP as the source. The handshake
    # would fail anyway (the reply goes elsewhere), so the proof is the tap
    # guard counting the SYNs as spoofed.
    other = str(agent.plan.slot(net.slot + 1).sandbox_ip)
    sh.ip("addr", "add", f"{other}/32", "dev", "eth0", ns=guest.name)
    sh.ip("route", "replace", "default", "via", net.gateway_ip, "src", other, ns=guest.name)
    before = guard_counter(net.netns, "spoofed_ip")
    ok, body = guest.fetch(url, timeout=1)
    assert not ok, f"spoofed source got through: {body}"
    assert guard_counter(net.netns, "spoofed_ip") > before, "the tap guard did not drop the spoofed source"
    sh.ip("route", "replace", "default", "via", net.gateway_ip, "src", net.guest_ip, ns=guest.name)
    ok, body = guest.fetch(url)
    assert ok, body

    # A different MAC.
    sh.ip("link", "set", "eth0", "address", "02:aa:bb:cc:dd:ee", ns=guest.name)
    sh.ip("neigh", "flush", "dev", "eth0", ns=guest.name)
    before = guard_counter(net.netns, "spoofed_mac")
    ok, body = guest.fetch(url, timeout=1)
    assert not ok, f"spoofed MAC got through: {body}"
    assert guard_counter(net.netns, "spoofed_mac") > before, "the tap guard did not drop the spoofed MAC"


async def test_internet_off_blocks_egress_but_keeps_exposed_ports(bed, agent):
    net = await agent.allocate("off-1", {"policy": {"internet": False}})
    guest = LightGuest.attach(bed, net, "a")
    before = counter_packets(bed.host, bed.agent_prefix, "drop_egress_blocked")
    ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/", timeout=1)
    assert not ok and "timed out" in body, body
    assert counter_packets(bed.host, bed.agent_prefix, "drop_egress_blocked") > before
    bed.start_server(guest.name, "--http", "8080")
    port = await agent.expose("off-1", 8080)
    ok, body = bed.fetch(bed.inet, f"http://{UPLINK_IP}:{port}/")
    assert ok, body
    assert json.loads(body)["client"] == INET_IP  # the internet client's address, preserved


async def test_policy_narrowing_kills_open_egress_flows_but_not_ingress(bed, agent):
    net = await agent.allocate("narrow-1")
    guest = LightGuest.attach(bed, net, "a")
    bed.start_server(guest.name, "--http", "8080")
    port = await agent.expose("narrow-1", 8080)
    egress = sh.popen(sh.PYTHON, "-c", _HOLD_OPEN, WEB_IP, str(ECHO_PORT), "8", ns=guest.name)
    ingress = sh.popen(sh.PYTHON, "-c", _HOLD_OPEN, UPLINK_IP, str(port), "4", "http", ns=bed.inet)
    try:
        for proc in (egress, ingress):
            assert proc.stdout.readline().strip() == "connected"
        assert egress.poll() is None and ingress.poll() is None

        updated = await agent.update_policy("narrow-1", {"internet": False})
        returned = time.monotonic()  # CLOCK_MONOTONIC: the same clock in the child processes
        assert updated.internet is False and updated.policy.internet is False
        verdict = egress.stdout.readline().split()
        assert verdict[0] == "dead", f"the egress flow survived narrowing: {verdict}"
        late = float(verdict[1]) - returned
        assert late < 1.5, f"the egress flow died {late:.2f} s after update_policy returned"
        out, err = ingress.communicate(timeout=15)
        assert out.split()[0] == "survived", f"the exposed-port connection died: {out} {err}"
    finally:
        for proc in (egress, ingress):
            proc.kill()
            proc.wait(5)
    ok, _ = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/", timeout=1)
    assert not ok
    await agent.update_policy("narrow-1", {"internet": True})
    ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")
    assert ok, body


# Keep a TCP connection busy for SECONDS, a round trip every 100 ms. Prints
# "survived" if every round trip worked, else "dead <monotonic time>" as soon as
# one fails (no answer within 0.8 s: echo answers take milliseconds here).
_HOLD_OPEN = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print("connected", flush=True)
s.settimeout(0.8)
end = time.monotonic() + float(sys.argv[3])
try:
    while time.monotonic() < end:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" if len(sys.argv) > 4 else b"x")
        if not s.recv(4096):
            raise OSError("closed")
        time.sleep(0.1)
except OSError:
    print("dead", time.monotonic(), flush=True)
    sys.exit(1)
print("survived", flush=True)
"""

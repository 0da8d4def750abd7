"""Egress policy with real packets: modes, CIDR and port lists, precedence,
SMTP, and refusal of bad policies without side effects."""
from __future__ import annotations

import json

import pytest

from netagent.errors import InvalidArgument
from tests.datapath.helpers import counter_packets, sandbox_elements
from tests.testbed.bed import CLIENT_IP, ECHO_PORT, HTTP_PORT, SMTP_PORT, WEB2_IP, WEB_IP, LightGuest


def reach(guest, ip: str, port: int) -> bool:
    url = f"http://{ip}:{port}/" if port == HTTP_PORT else f"tcp://{ip}:{port}"
    return guest.fetch(url, timeout=0.8)[0]


def matrix(guest) -> dict[str, bool]:
    return {f"{ip}:{port}": reach(guest, ip, port)
            for ip in (WEB_IP, WEB2_IP, CLIENT_IP) for port in (HTTP_PORT, ECHO_PORT)}


CASES = {
    # internet off: only the allow list
    "off+allow-cidr": ({"internet": False, "allow_out": ["203.0.113.0/24"]},
                       {WEB_IP: (1, 1), WEB2_IP: (1, 1), CLIENT_IP: (0, 0)}),
    "off+allow-ip:port": ({"internet": False, "allow_out": [f"{WEB_IP}:{HTTP_PORT}"]},
                          {WEB_IP: (1, 0), WEB2_IP: (0, 0), CLIENT_IP: (0, 0)}),
    # internet on: everything but the deny list
    "on+deny-cidr": ({"internet": True, "deny_out": ["203.0.113.0/24"]},
                     {WEB_IP: (0, 0), WEB2_IP: (0, 0), CLIENT_IP: (1, 1)}),
    "on+deny-port": ({"internet": True, "deny_out": [f":{ECHO_PORT}"]},
                     {WEB_IP: (1, 0), WEB2_IP: (1, 0), CLIENT_IP: (1, 0)}),
    # precedence: allow beats deny beats default
    "on+deny-cidr+allow-ip": ({"internet": True, "deny_out": ["203.0.113.0/24"], "allow_out": [WEB_IP]},
                              {WEB_IP: (1, 1), WEB2_IP: (0, 0), CLIENT_IP: (1, 1)}),
    "off+allow-cidr+deny-ip": ({"internet": False, "allow_out": ["203.0.113.0/24"], "deny_out": [WEB_IP]},
                               {WEB_IP: (1, 1), WEB2_IP: (1, 1), CLIENT_IP: (0, 0)}),
    "on+deny-cidr:port+allow-ip:port": ({"internet": True, "deny_out": [f"203.0.113.0/24:{HTTP_PORT}"],
                                         "allow_out": [f"{WEB2_IP}:{HTTP_PORT}"]},
                                        {WEB_IP: (0, 1), WEB2_IP: (1, 1), CLIENT_IP: (1, 1)}),
}


def expected(table: dict[str, tuple[int, int]]) -> dict[str, bool]:
    return {f"{ip}:{port}": bool(v[i]) for ip, v in table.items() for i, port in enumerate((HTTP_PORT, ECHO_PORT))}


async def test_every_mode_and_precedence_case_with_real_packets(bed, agent):
    net = await agent.allocate("pol-1")
    guest = LightGuest.attach(bed, net, "a")
    assert matrix(guest) == {k: True for k in expected(CASES["on+deny-cidr"][1])}  # default: internet on
    for name, (policy, table) in CASES.items():
        await agent.update_policy("pol-1", policy)
        assert matrix(guest) == expected(table), name
    # The same policies given at allocate time.
    for i, (name, (policy, table)) in enumerate(list(CASES.items())[:3]):
        other = await agent.allocate(f"pol-at-{i}", {"policy": policy})
        g = LightGuest.attach(bed, other, f"p{i}")
        assert matrix(g) == expected(table), name
        g.stop()
        await agent.release(f"pol-at-{i}")


async def test_smtp_is_blocked_even_when_allowed(bed, agent):
    net = await agent.allocate("smtp-1", {"policy": {"internet": True, "allow_out": [f"{WEB_IP}:{SMTP_PORT}"]}})
    guest = LightGuest.attach(bed, net, "a")
    assert not reach(guest, WEB_IP, SMTP_PORT)
    ok, _ = bed.fetch(bed.host, f"tcp://{WEB_IP}:{SMTP_PORT}")  # control: the server answers the host
    assert ok
    assert reach(guest, WEB_IP, ECHO_PORT)


async def test_bad_policies_are_refused_without_changing_the_ruleset(bed, agent):
    net = await agent.allocate("bad-1", {"policy": {"internet": False, "allow_out": ["203.0.113.0/24"]}})
    before = sandbox_elements(bed.host, bed.agent_prefix, net.sandbox_ip)
    assert before["allow_net"] and before["egress_blocked"]
    bad = [
        {"allow_out": ["203.0.113.0/24", "203.0.113.300"]},
        {"deny_out": ["evil.test"]},
        {"allow_out": [f"198.51.100.{i}" for i in range(257)]},
        {"allow_out": ["203.0.113.1/24"]},
        {"internet": "sometimes"},
    ]
    for policy in bad:
        with pytest.raises(InvalidArgument):
            await agent.update_policy("bad-1", policy)
    assert sandbox_elements(bed.host, bed.agent_prefix, net.sandbox_ip) == before
    assert (await agent.get("bad-1")).policy.allow_out == ("203.0.113.0/24",)
    await agent.release("bad-1")
    assert not any(sandbox_elements(bed.host, bed.agent_prefix, net.sandbox_ip).values())


# Open N TCP connections to the echo server and keep them; print how many connected.
_OPEN_MANY = r"""
import socket, sys, time
held, ok = [], 0
for _ in range(int(sys.argv[3])):
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0)
        s.sendall(b"x"); s.recv(1)
        held.append(s) if sys.argv[4] == "hold" else s.close()
        ok += 1
    except OSError:
        pass
print(ok)
"""


# Connect, send a byte and close, again and again for argv[3] seconds. A dropped
# SYN costs the 0.5 s connect timeout (its first retransmit would come after
# 1 s); a SYN that passed is never counted as dropped on a slow host (0.5 s for
# the SYN-ACK, 5 s for the echo). Prints [connected, attempts, seconds from the
# first attempt to the start of the last one].
_CONNECT_FOR = r"""
import json, socket, sys, time
ok = attempts = 0
start = last = time.monotonic()
while time.monotonic() - start < float(sys.argv[3]):
    attempts += 1
    last = time.monotonic()
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5)
    except OSError:
        continue
    s.settimeout(5)
    s.sendall(b"x"); s.recv(1); s.close()
    ok += 1
print(json.dumps([ok, attempts, last - start]))
"""


def _open_many(guest, n: int, mode: str) -> int:
    from tests.testbed import sh
    out = sh.run(sh.PYTHON, "-c", _OPEN_MANY, WEB_IP, str(ECHO_PORT), str(n), mode, ns=guest.name, timeout=60).stdout
    return int(out.strip())


async def test_concurrent_connection_cap_bites(bed, tmp_path):
    from netagent.agent import Agent
    from tests.conftest import agent_config
    agent = Agent(agent_config(bed, tmp_path / "state", conn_limit=5))
    await agent.start()
    try:
        guest = LightGuest.attach(bed, await agent.allocate("cap-1"), "a")
        assert _open_many(guest, 10, "hold") == 5
        assert counter_packets(bed.host, bed.agent_prefix, "drop_conn_limit") > 0
        assert _open_many(guest, 3, "close") == 3  # closed connections free the cap
    finally:
        await agent.stop()


async def test_new_connection_rate_limit_bites(bed, tmp_path):
    from netagent.agent import Agent
    from tests.conftest import agent_config
    agent = Agent(agent_config(bed, tmp_path / "state", new_conn_rate=5, new_conn_burst=5))
    await agent.start()
    try:
        guest = LightGuest.attach(bed, await agent.allocate("rate-1"), "a")
        from tests.testbed import sh
        out = sh.run(sh.PYTHON, "-c", _CONNECT_FOR, WEB_IP, str(ECHO_PORT), "3.0", ns=guest.name, timeout=60).stdout
        ok, attempts, window = json.loads(out)
        # docs/datapath.md: new connections pass at new_conn_rate/s after a burst of new_conn_burst.
        # Dropped SYNs take no token, so by the last attempt burst + rate * window had passed;
        # the margin is one token of refill rounding at each end of the window.
        assert attempts > ok + 3, (ok, attempts)
        assert abs(ok - (5 + 5 * window)) <= 1.5, (ok, window)
        assert counter_packets(bed.host, bed.agent_prefix, "drop_conn_rate") > 0
    finally:
        await agent.stop()


async def test_the_new_flow_rate_limit_counts_flows_not_datagrams_of_an_unanswered_udp_flow(bed, tmp_path):
    """A one-way UDP stream (metrics, logs) stays `ct state new` as no reply
    comes; 1,000 datagrams/s of it must not be policed as 1,000 new flows/s
    by the 200/s new-flow limit."""
    import asyncio

    from netagent.agent import Agent
    from tests.conftest import agent_config
    from tests.testbed import sh
    agent = Agent(agent_config(bed, tmp_path / "state"))
    await agent.start()
    try:
        guest = LightGuest.attach(bed, await agent.allocate("udp-1"), "a")
        sink = bed.start_module(bed.inet, "tests.testbed.udp_flood", "quiet-sink", WEB_IP, "9030")
        out = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.udp_flood", "send-oneway", WEB_IP,
                                      "9030", "2.0", "1000", ns=guest.name, timeout=30)
        sent = json.loads(out.stdout)["sent"]
        got = json.loads(await asyncio.to_thread(sink.stdout.readline))["packets"]
        # policed as flows it would get 200/s x 2 s + a burst of 400 = 800
        assert sent >= 1900 and got >= 0.95 * sent, (sent, got)
        assert counter_packets(bed.host, bed.agent_prefix, "drop_conn_rate") == 0
    finally:
        await agent.stop()


# Resolve NAME through SERVER:53 (UDP), then connect to the first A record's
# HTTP port. Prints: "<rcode> <addresses> <connected|unreachable|->".
_RESOLVE_AND_CONNECT = r"""
import socket, sys
import dns.message, dns.query, dns.rcode, dns.rdatatype
import dns.exception
q = dns.message.make_query(sys.argv[1], "A")
try:
    r = dns.query.udp(q, sys.argv[2], timeout=2)
except dns.exception.Timeout:
    print("timeout - -"); sys.exit(0)
addrs = [rr.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset]
state = "-"
if addrs:
    try:
        socket.create_connection((addrs[0], int(sys.argv[3])), timeout=0.8).close(); state = "connected"
    except OSError:
        state = "unreachable"
print(dns.rcode.to_text(r.rcode()), ",".join(addrs) or "-", state)
"""


async def resolve(guest, name: str, server: str = "169.254.0.22") -> tuple[str, str, str]:
    """Off the event loop: the agent's DNS proxy runs on it."""
    import asyncio

    from tests.testbed import sh
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-c", _RESOLVE_AND_CONNECT, name, server, str(HTTP_PORT),
                                  ns=guest.name)
    rcode, addrs, state = res.stdout.split()
    return rcode, addrs, state


async def test_domain_allowlist_through_the_dns_proxy(bed, agent):
    policy = {"internet": False, "allow_out": ["allowed.test", "*.cdn.test", "alias.test"]}
    net = await agent.allocate("dns-1", {"policy": policy})
    assert net.boot_ip_arg.endswith(":off:169.254.0.22")  # the guest's resolver is its gateway
    guest = LightGuest.attach(bed, net, "a")

    # Before any lookup, the addresses are closed (internet is off).
    assert not reach(guest, WEB_IP, HTTP_PORT) and not reach(guest, WEB2_IP, HTTP_PORT)
    assert await resolve(guest, "allowed.test") == ("NOERROR", WEB_IP, "connected")     # first SYN passes
    assert await resolve(guest, "a.cdn.test") == ("NOERROR", WEB2_IP, "connected")      # wildcard
    assert (await resolve(guest, "cdn.test"))[0] == "REFUSED"  # the suffix itself is not in it
    assert await resolve(guest, "denied.test") == ("REFUSED", "-", "-")
    assert not reach(guest, CLIENT_IP, HTTP_PORT)                                  # denied.test's address
    # Any protocol, not only HTTP: the echo port of an admitted address works too.
    assert reach(guest, WEB2_IP, ECHO_PORT)
    # Access ends when the record's TTL (2 s) runs out.
    import asyncio
    await asyncio.sleep(3.5)
    assert not reach(guest, WEB_IP, HTTP_PORT)
    assert reach(guest, WEB2_IP, HTTP_PORT)          # *.cdn.test had TTL 60
    # A CNAME chain: alias.test -> allowed.test; its A record is admitted again.
    assert await resolve(guest, "alias.test") == ("NOERROR", WEB_IP, "connected")
    # Narrowing away the domains removes what their lookups admitted.
    await agent.update_policy("dns-1", {"internet": False})
    assert not reach(guest, WEB2_IP, HTTP_PORT)
    assert (await resolve(guest, "allowed.test"))[0] == "REFUSED"


# Ask SERVER the same question on UDP/TCP 53 and 853, straight, not through the
# proxy. Prints one outcome per try: answered (a DNS reply), refused (the packet
# arrived: RST or ICMP port unreachable) or timeout (dropped on the way).
_QUERY_DIRECT = r"""
import socket, struct, sys
import dns.message
wire = dns.message.make_query("allowed.test", "A").to_wire()
out = []
for proto, port in (("udp", 53), ("tcp", 53), ("udp", 853), ("tcp", 853)):
    try:
        if proto == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1.0)
            s.connect((sys.argv[1], port))
            s.send(wire)
            s.recv(4096)
        else:
            s = socket.create_connection((sys.argv[1], port), timeout=1.0)
            s.sendall(struct.pack("!H", len(wire)) + wire)
            s.recv(4096)
        out.append("answered")
    except ConnectionRefusedError:
        out.append("refused")
    except socket.timeout:
        out.append("timeout")
print(" ".join(out))
"""
DIRECT_TRIES = ("udp/53", "tcp/53", "udp/853", "tcp/853")


async def query_direct(guest, server: str) -> dict[str, str]:
    import asyncio

    from tests.testbed import sh
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-c", _QUERY_DIRECT, server, ns=guest.name)
    return dict(zip(DIRECT_TRIES, res.stdout.split(), strict=True))


async def test_domain_allowlist_locks_out_other_resolvers(bed, agent):
    """With internet on (so no egress rule is in the way), a domain entry alone
    must keep the guest off every resolver but the agent's proxy."""
    from tests.testbed.bed import DNS_IP
    locked = LightGuest.attach(bed, await agent.allocate("dnslock-1", {"policy": {"allow_out": ["allowed.test"]}}),
                               "a")
    control = LightGuest.attach(bed, await agent.allocate("dnsfree-1"), "b")
    # Control: without domains every try reaches the resolver's address.
    seen = await query_direct(control, DNS_IP)
    assert seen["udp/53"] == "answered" and set(seen.values()) <= {"answered", "refused"}, seen
    assert reach(locked, WEB_IP, HTTP_PORT)  # internet is on for the locked one too

    before = counter_packets(bed.host, bed.agent_prefix, "drop_dns_bypass")
    assert await query_direct(locked, DNS_IP) == {t: "timeout" for t in DIRECT_TRIES}
    assert counter_packets(bed.host, bed.agent_prefix, "drop_dns_bypass") - before >= len(DIRECT_TRIES)
    # The proxy still answers it.
    assert (await resolve(locked, "allowed.test"))[:2] == ("NOERROR", WEB_IP)

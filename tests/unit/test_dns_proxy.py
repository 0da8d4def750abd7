"""DnsProxy with injected callables: the three modes, AAAA, other types, the
cache (admission per sandbox on every hit) and bad queries. No sockets: the
upstream is the test bed's zone as a function."""
from __future__ import annotations

import asyncio
import socket
import struct

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from netagent.dns.proxy import DnsProxy, serve
from netagent.models import EgressPolicy
from netagent.policy import compile_policy
from tests.testbed import dns_server

OPEN, LISTED, OPEN_LISTED, CLOSED = "10.12.0.1", "10.12.0.3", "10.12.0.5", "10.12.0.7"
POLICIES = {
    OPEN: compile_policy(EgressPolicy(internet=True)),
    LISTED: compile_policy(EgressPolicy(internet=False, allow_out=["public.test", "allowed.test", "o.cdn.test"])),
    OPEN_LISTED: compile_policy(EgressPolicy(internet=True, deny_out=["203.0.113.0/24"],
                                             allow_out=["public.test"])),
    CLOSED: compile_policy(EgressPolicy(internet=False)),
}


class Harness:
    def __init__(self) -> None:
        self.now = 1000.0
        self.upstream_queries: list[str] = []
        self.admitted: list[tuple[str, str, int]] = []
        self.admitted_for: list[str] = []     # the asked name of each admission (first-payload check)
        self.proxy = DnsProxy(POLICIES.get, self._admit, self._upstream, ["192.0.2.53"], ttl_floor=1,
                              ttl_cap=300, clock=lambda: self.now)

    async def _admit(self, sandbox_ip: str, addresses: list[tuple[str, int]], name: str) -> None:
        self.admitted += [(sandbox_ip, a, ttl) for a, ttl in addresses]
        self.admitted_for.append(name)

    async def _upstream(self, wire: bytes, upstream: str, timeout: float) -> bytes:
        self.upstream_queries.append(dns.message.from_wire(wire).question[0].to_text())
        return dns_server.answer(wire)

    def ask(self, sandbox_ip: str, name: str, rdtype: str = "A") -> dns.message.Message:
        wire = dns.message.make_query(name, rdtype).to_wire()
        return dns.message.from_wire(asyncio.run(self.proxy.answer(wire, sandbox_ip)))


def addresses(msg: dns.message.Message) -> list[str]:
    return [rr.to_text() for rrset in msg.answer for rr in rrset if rrset.rdtype == dns.rdatatype.A]


def test_internet_on_forwards_every_name_and_admits_nothing():
    h = Harness()
    assert addresses(h.ask(OPEN, "public.test")) == ["203.0.113.10"]
    assert addresses(h.ask(OPEN, "other.test")) == ["203.0.113.11"]
    assert h.ask(OPEN, "missing.test").rcode() == dns.rcode.NXDOMAIN
    assert h.admitted == []


def test_allowlist_forwards_and_admits_only_listed_names():
    h = Harness()
    assert addresses(h.ask(LISTED, "Public.Test")) == ["203.0.113.10"]
    assert h.admitted == [(LISTED, "203.0.113.10", 30)]
    assert h.admitted_for == ["public.test"]
    assert h.ask(LISTED, "other.test").rcode() == dns.rcode.REFUSED
    assert h.upstream_queries == ["Public.Test. IN A"]      # the refused name never left


def test_internet_on_with_domains_admits_the_listed_names_only():
    h = Harness()
    assert addresses(h.ask(OPEN_LISTED, "public.test")) == ["203.0.113.10"]
    assert addresses(h.ask(OPEN_LISTED, "other.test")) == ["203.0.113.11"]
    assert h.admitted == [(OPEN_LISTED, "203.0.113.10", 30)]


def test_internet_off_without_domains_and_unknown_sources_are_refused_unforwarded():
    h = Harness()
    assert h.ask(CLOSED, "public.test").rcode() == dns.rcode.REFUSED
    assert h.ask("10.12.0.9", "public.test").rcode() == dns.rcode.REFUSED
    assert h.upstream_queries == [] and h.admitted == []


def test_aaaa_is_an_empty_noerror_for_names_that_exist_and_nxdomain_stays():
    h = Harness()
    for sandbox in (OPEN, LISTED):
        msg = h.ask(sandbox, "public.test", "AAAA")          # the zone has an AAAA record: hidden
        assert msg.rcode() == dns.rcode.NOERROR and msg.answer == [] and msg.flags & dns.flags.QR
        assert msg.question[0].rdtype == dns.rdatatype.AAAA
    assert h.ask(OPEN, "allowed.test", "AAAA").rcode() == dns.rcode.NOERROR
    assert h.ask(OPEN, "missing.test", "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert h.ask(LISTED, "other.test", "AAAA").rcode() == dns.rcode.REFUSED


def test_other_types_pass_through_for_internet_on_and_for_listed_names_only():
    h = Harness()
    for sandbox in (OPEN, LISTED):
        assert h.ask(sandbox, "public.test", "TXT").answer[0].to_text() == 'public.test. 30 IN TXT "hello"'
        assert h.ask(sandbox, "public.test", "MX").answer[0].rdtype == dns.rdatatype.MX
        assert h.ask(sandbox, "public.test", "HTTPS").answer[0].rdtype == dns.rdatatype.HTTPS
    assert h.ask(OPEN, "_http._tcp.public.test", "SRV").answer[0].rdtype == dns.rdatatype.SRV
    assert h.ask(LISTED, "_http._tcp.public.test", "SRV").rcode() == dns.rcode.REFUSED   # not a listed name
    assert h.admitted == []          # only A records are admitted, never an HTTPS record's ipv4hint
    assert h.ask(LISTED, "other.test", "TXT").rcode() == dns.rcode.REFUSED
    assert h.ask(OPEN, "other.test", "TXT").rcode() == dns.rcode.NOERROR


def test_a_cache_hit_is_decided_and_admitted_per_sandbox():
    h = Harness()
    h.ask(OPEN, "public.test")                               # fills the cache, admits nothing
    h.now += 10
    msg = h.ask(LISTED, "public.test")                       # a hit, aged, and admitted for this sandbox
    assert msg.answer[0].ttl == 20 and h.admitted == [(LISTED, "203.0.113.10", 20)]
    assert h.ask(CLOSED, "public.test").rcode() == dns.rcode.REFUSED
    h.ask(OPEN, "public.test")
    assert h.admitted == [(LISTED, "203.0.113.10", 20)]       # nothing for the others
    assert h.upstream_queries == ["public.test. IN A"]
    assert h.proxy.stats["cache_hits"] == 2 and h.proxy.stats["cache_misses"] == 1
    h.now += 21                                              # past the TTL: asked again
    h.ask(OPEN, "public.test")
    assert h.upstream_queries == ["public.test. IN A"] * 2


def test_bad_queries_get_an_error_answer_or_nothing():
    h = Harness()
    two = dns.message.make_query("public.test", "A")
    two.question.append(dns.message.make_query("other.test", "A").question[0])
    reply = asyncio.run(h.proxy.answer(two.to_wire(), OPEN))
    assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
    notify = dns.message.make_query("public.test", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(asyncio.run(h.proxy.answer(notify.to_wire(), OPEN))).rcode() == dns.rcode.NOTIMP
    response = dns.message.make_response(dns.message.make_query("public.test", "A")).to_wire()
    for junk in (b"", b"\x01\x02\x03", b"\xff" * 40, response):
        assert asyncio.run(h.proxy.answer(junk, OPEN)) is None
    assert h.upstream_queries == [] and h.proxy.stats["malformed"] == 2 + 4
    assert addresses(h.ask(OPEN, "public.test")) == ["203.0.113.10"]


def test_a_sandbox_with_many_misses_waits_behind_its_own_never_ahead_of_others():
    async def scenario() -> list[str]:
        release = asyncio.Event()
        order: list[str] = []

        async def slow_upstream(wire: bytes, upstream: str, timeout: float) -> bytes:
            order.append(dns.message.from_wire(wire).question[0].name.to_text())
            await release.wait()
            return dns_server.answer(wire)

        async def no_admit(sandbox_ip: str, addresses: list[tuple[str, int]], name: str) -> None:
            pass

        proxy = DnsProxy(POLICIES.get, no_admit, slow_upstream, ["192.0.2.53"], 1, 300)
        flood = [asyncio.create_task(proxy.answer(dns.message.make_query(f"f{i}.cdn.test", "A").to_wire(), OPEN))
                 for i in range(50)]
        await asyncio.sleep(0)
        other = asyncio.create_task(proxy.answer(dns.message.make_query("o.cdn.test", "A").to_wire(), LISTED))
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*flood, other)
        return order

    order = asyncio.run(scenario())
    assert order.index("o.cdn.test.") <= 8 and len(order) == 51


def test_tcp_framing_oversized_queries_and_idle_clients_on_loopback():
    """The TCP side of the proxy, on 127.0.0.1 only: a query is answered, a
    length over 4 KiB closes the connection unread, an idle client is closed."""
    async def scenario() -> None:
        h = Harness()
        h.proxy.lookup = {"127.0.0.1": POLICIES[OPEN]}.get      # the client is 127.0.0.1 here
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for s in (udp, tcp):
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        tcp.listen(8)
        transport, server = await serve(h.proxy, udp, tcp, tcp_idle_s=0.3)
        port = tcp.getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            wire = dns.message.make_query("public.test", "A").to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            assert addresses(dns.message.from_wire(await reader.readexactly(size))) == ["203.0.113.10"]
            async with asyncio.timeout(2):
                assert await reader.read() == b""          # idle for 0.3 s: closed
            writer.close()
            # A well-formed query padded to 60 KB (an EDNS option): closed, never answered.
            plain = dns.message.make_query("public.test", "A", use_edns=0).to_wire()[:-11]   # minus its OPT
            big = plain + b"\0" + struct.pack("!HHIHHH", 41, 1232, 0, 60004, 65001, 60000) + b"\0" * 60000
            assert dns.message.from_wire(big).question[0].name.to_text() == "public.test."
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(struct.pack("!H", len(big)) + big)
            async with asyncio.timeout(2):
                assert await reader.read() == b""
            writer.close()
        finally:
            server.close()
            transport.close()

    asyncio.run(scenario())

"""DNS proxy for domain allowlists (UDP and TCP, in the host netns).

A guest resolves through its gateway; the slot DNATs that to this proxy, and
the slot's masquerade makes the source the sandbox IP, which names the
sandbox. A name the sandbox may not use gets REFUSED. An allowed name is
resolved upstream; every A record of the answer (CNAME chains included) is put
into `fqdn_ips` for that sandbox, with the record's TTL clamped to
[ttl_floor, ttl_cap], before the answer is released, so the first SYN passes.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
from collections.abc import Awaitable, Callable

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from ..policy import domain_allowed
from . import wire as wire_format

log = logging.getLogger("netagent.dns")

Lookup = Callable[[str], tuple[str, ...] | None]          # sandbox IP -> allowed domains (None: unknown)
# Sends one query (wire bytes) upstream. Its socket must live in the host netns
# (sockets keep their netns). It returns the answer as wire bytes, with the
# client's query id.
Upstream = Callable[[bytes, str, float], Awaitable[bytes]]
Admit = Callable[[str, list[tuple[str, int]]], Awaitable[None]]  # sandbox IP, [(address, ttl)]


class DnsProxy:
    def __init__(self, lookup: Lookup, admit: Admit, query_upstream: Upstream, upstreams: list[str],
                 ttl_floor: int, ttl_cap: int, timeout: float = 2.0):
        self.lookup = lookup
        self.query_upstream = query_upstream
        self.admit = admit
        self.upstreams = upstreams
        self.ttl_floor = ttl_floor
        self.ttl_cap = ttl_cap
        self.timeout = timeout
        self.stats = {"queries": 0, "refused": 0, "answered": 0, "failed": 0}

    async def answer(self, wire: bytes, client_ip: str) -> bytes | None:
        """One query in, one response out (None: unparseable, drop it).
        Plain queries take the wire.py fast path; others go through dnspython."""
        question = wire_format.parse_query(wire)
        if question is not None:
            name: str | None = question.name
            def reply(rcode: int) -> bytes:
                return wire_format.error_response(wire, question, rcode)
        else:
            try:
                query = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                return None
            name = query.question[0].name.to_text() if query.question else None
            def reply(rcode: int) -> bytes:
                return _reply(query, rcode)
        self.stats["queries"] += 1
        domains = self.lookup(client_ip)
        if name is None or domains is None or not domain_allowed(name, domains):
            self.stats["refused"] += 1
            return reply(dns.rcode.REFUSED)
        try:
            raw = await self._resolve(wire)
            addresses = _a_records(raw)
        except (dns.exception.DNSException, OSError) as exc:
            self.stats["failed"] += 1
            log.warning("upstream failed for %s: %s", name, exc)
            return reply(dns.rcode.SERVFAIL)
        if addresses:
            await self.admit(client_ip, [(a, self._ttl(ttl)) for a, ttl in addresses])  # before the guest sees it
        self.stats["answered"] += 1
        return raw  # as the upstream sent it: no re-encoding

    async def _resolve(self, wire: bytes) -> bytes:
        last: Exception | None = None
        for upstream in self.upstreams:
            try:
                return await self.query_upstream(wire, upstream, self.timeout)
            except (dns.exception.DNSException, OSError) as exc:
                last = exc
        raise last or dns.exception.DNSException("no upstream resolver configured")

    def _ttl(self, ttl: int) -> int:
        return max(self.ttl_floor, min(self.ttl_cap, ttl))


def _a_records(raw: bytes) -> list[tuple[str, int]]:
    fast = wire_format.a_records(raw)
    if fast is not None:
        return fast
    response = dns.message.from_wire(raw)
    return [(rr.address, rrset.ttl) for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset]


def _reply(query: dns.message.Message, rcode: int) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy):
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        asyncio.ensure_future(self._handle(data, addr))

    async def _handle(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.proxy.answer(data, addr[0])
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def _tcp_client(proxy: DnsProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")[0]
    try:
        while True:
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            reply = await proxy.answer(await reader.readexactly(size), peer)
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def bind_sockets(port: int) -> tuple[socket.socket, socket.socket]:
    """Call in the host netns (sockets keep the netns they were made in)."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for s in (udp, tcp):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
    tcp.listen(1024)
    return udp, tcp


async def serve(proxy: DnsProxy, udp: socket.socket,
                tcp: socket.socket) -> tuple[asyncio.BaseTransport, asyncio.Server]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(proxy), sock=udp)
    server = await asyncio.start_server(lambda r, w: _tcp_client(proxy, r, w), sock=tcp)
    return transport, server




class UpstreamClient(asyncio.DatagramProtocol):
    """Upstream queries over one UDP socket made in the host netns, matched to
    their answers by (query id, server). Truncated answers are retried over TCP
    on a host-netns thread (`tcp_fallback`)."""

    def __init__(self, tcp_fallback: Upstream):
        self.tcp_fallback = tcp_fallback
        self.pending: dict[tuple[int, str], asyncio.Future[bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._next_id = secrets.randbelow(0x10000)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 2:
            fut = self.pending.pop((struct.unpack("!H", data[:2])[0], addr[0]), None)
            if fut is not None and not fut.done():
                fut.set_result(data)

    async def query(self, query: bytes, upstream: str, timeout: float) -> bytes:
        assert self.transport is not None
        qid = self._free_id(upstream)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self.pending[(qid, upstream)] = fut
        timer = loop.call_later(timeout, lambda: fut.done() or fut.set_exception(dns.exception.Timeout()))
        try:
            self.transport.sendto(struct.pack("!H", qid) + query[2:], (upstream, 53))
            data = await fut
        finally:
            timer.cancel()
            self.pending.pop((qid, upstream), None)
        if len(data) >= 4 and data[2] & 0x02:  # TC: truncated, ask again over TCP
            return await self.tcp_fallback(query, upstream, timeout)
        return query[:2] + data[2:]

    def _free_id(self, upstream: str) -> int:
        for _ in range(0x10000):
            self._next_id = (self._next_id + 1) & 0xFFFF
            if (self._next_id, upstream) not in self.pending:
                return self._next_id
        raise dns.exception.DNSException("65,536 upstream queries in flight")


def upstream_socket() -> socket.socket:
    """Call in the host netns."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.setblocking(False)
    return sock


def query_tcp_blocking(query: bytes, upstream: str, timeout: float) -> bytes:
    """Blocking: run it on a host-netns thread."""
    return dns.query.tcp(dns.message.from_wire(query), upstream, timeout=timeout).to_wire()

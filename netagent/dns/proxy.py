"""The gateway resolver: a DNS proxy for every sandbox (UDP and TCP, in the host netns).

A guest resolves through its gateway; the slot DNATs that to this proxy, and
the slot's masquerade makes the source the sandbox IP, which names the
sandbox. decision.py says, from the sandbox's policy, whether a name is
refused, forwarded, or forwarded and admitted: every A record of an admitted
answer (CNAME chains included) is put into `fqdn_ips` for that sandbox, with
the record's TTL clamped to [ttl_floor, ttl_cap], before the answer is
released, so the first SYN passes. Answers are cached (cache.py); the decision
and the admission are made per sandbox on every query, hit or miss.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype

from . import wire as wire_format
from .cache import AnswerCache
from .decision import ResolverPolicy, decide, hide_aaaa

log = logging.getLogger("netagent.dns")

Lookup = Callable[[str], ResolverPolicy | None]           # sandbox IP -> its policy (None: no sandbox)
# Sends one query (wire bytes) upstream. Its socket must live in the host netns
# (sockets keep their netns). It returns the answer as wire bytes, with the
# client's query id.
Upstream = Callable[[bytes, str, float], Awaitable[bytes]]
Admit = Callable[[str, list[tuple[str, int]], str], Awaitable[None]]  # sandbox IP, [(address, ttl)], the asked name
# Request interception (issue #23): does this sandbox have request rules for the
# name; then its answered addresses go to the steering hook (sandbox IP, name,
# [(address, ttl)], admitted by the allowlist) before the guest sees them.
Ruled = Callable[[str, str], bool]
Steer = Callable[[str, str, list[tuple[str, int]], bool], Awaitable[None]]
UPSTREAM_PER_SANDBOX = 8  # queries one sandbox may have upstream at once; its others wait their turn
MAX_TCP_QUERY = 4096      # bytes; a real query is a few hundred at most
TCP_IDLE_S = 10.0         # an idle TCP client is closed
UDP_RCVBUF = 8 << 20
SO_RCVBUFFORCE = 33       # Linux; not in the socket module. Root may exceed rmem_max.


class DnsProxy:
    def __init__(self, lookup: Lookup, admit: Admit, query_upstream: Upstream, upstreams: list[str],
                 ttl_floor: int, ttl_cap: int, timeout: float = 2.0, cache: AnswerCache | None = None,
                 clock: Callable[[], float] = time.monotonic, ruled: Ruled | None = None,
                 steer: Steer | None = None):
        self.lookup = lookup
        self.ruled = ruled
        self.steer = steer
        self.query_upstream = query_upstream
        self.admit = admit
        self.upstreams = upstreams
        self.ttl_floor = ttl_floor
        self.ttl_cap = ttl_cap
        self.timeout = timeout
        self.cache = AnswerCache() if cache is None else cache
        self.clock = clock
        self._upstream_slots: dict[str, tuple[asyncio.Semaphore, int]] = {}  # sandbox IP -> (slots, users)
        self.stats = {"queries": 0, "refused": 0, "answered": 0, "failed": 0, "malformed": 0,
                      "cache_hits": 0, "cache_misses": 0}

    async def answer(self, wire: bytes, client_ip: str) -> bytes | None:
        """One query in, one response out (None: not a query, drop it).
        Plain queries take the wire.py fast path; others go through dnspython."""
        question = wire_format.parse_query(wire)
        if question is not None:
            name: str | None = question.name
            qtype = question.qtype
            def reply(rcode: int) -> bytes:
                return wire_format.error_response(wire, question, rcode)
        else:
            parsed = _parse_odd(wire)
            if parsed is None:
                self.stats["malformed"] += 1
                return None
            query, refusal = parsed
            if refusal is not None:
                self.stats["malformed"] += 1
                return _reply(query, refusal)
            name, qtype = query.question[0].name.to_text(), query.question[0].rdtype
            def reply(rcode: int) -> bytes:
                return _reply(query, rcode)
        self.stats["queries"] += 1
        verdict = decide(self.lookup(client_ip), name)
        if not verdict.forward:
            self.stats["refused"] += 1
            return reply(dns.rcode.REFUSED)
        asked = name.lower().rstrip(".")
        ruled = self.ruled is not None and self.ruled(client_ip, asked)
        try:
            raw = await self._cached_or_resolved(wire, client_ip)
            addresses = _a_records(raw) if verdict.admit or ruled else []
        except (dns.exception.DNSException, OSError) as exc:
            self.stats["failed"] += 1
            log.warning("upstream failed for %s: %s", name, exc)
            return reply(dns.rcode.SERVFAIL)
        if addresses and verdict.admit:
            await self.admit(client_ip, [(a, self._ttl(ttl)) for a, ttl in addresses],  # before the guest sees it
                             asked)
        if addresses and ruled and self.steer is not None:
            await self.steer(client_ip, asked, [(a, self._ttl(ttl)) for a, ttl in addresses], verdict.admit)
        self.stats["answered"] += 1
        if hide_aaaa(qtype, wire_format.rcode(raw)):
            return reply(dns.rcode.NOERROR)
        return raw  # as the upstream sent it: no re-encoding

    async def _cached_or_resolved(self, wire: bytes, client_ip: str) -> bytes:
        hit = self.cache.get(wire, self.clock())
        if hit is not None:
            self.stats["cache_hits"] += 1
            return hit
        self.stats["cache_misses"] += 1
        raw = await self._resolve_fairly(wire, client_ip)
        self.cache.put(wire, raw, self.clock())
        return raw

    async def _resolve_fairly(self, wire: bytes, client_ip: str) -> bytes:
        """Upstream is shared: a sandbox with many misses at once (a flood)
        queues behind its own, never ahead of the other sandboxes' queries."""
        slots, users = self._upstream_slots.get(client_ip) or (asyncio.Semaphore(UPSTREAM_PER_SANDBOX), 0)
        self._upstream_slots[client_ip] = (slots, users + 1)
        try:
            async with slots:
                return await self._resolve(wire)
        finally:
            slots, users = self._upstream_slots[client_ip]
            if users == 1:
                del self._upstream_slots[client_ip]
            else:
                self._upstream_slots[client_ip] = (slots, users - 1)

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


def _parse_odd(wire: bytes) -> tuple[dns.message.Message, int | None] | None:
    """A query the fast path declined: (message, None) to serve it, (message,
    rcode) to refuse it with that rcode, or None to drop it (unparseable, or a
    response rather than a query)."""
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    if query.flags & dns.flags.QR:
        return None
    if query.opcode() != dns.opcode.QUERY:
        return query, dns.rcode.NOTIMP
    if len(query.question) != 1:
        return query, dns.rcode.FORMERR
    return query, None


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


async def _tcp_client(proxy: DnsProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      idle_s: float) -> None:
    peer = writer.get_extra_info("peername")[0]
    try:
        while True:
            async with asyncio.timeout(idle_s):
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                if size > MAX_TCP_QUERY:
                    proxy.stats["malformed"] += 1
                    break   # close without reading it
                query = await reader.readexactly(size)
            reply = await proxy.answer(query, peer)
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()


def bind_sockets(port: int) -> tuple[socket.socket, socket.socket]:
    """Call in the host netns (sockets keep the netns they were made in)."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Room for every sandbox's burst (the host table caps each sandbox's rate),
    # so one busy sandbox does not fill the queue the others share.
    udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_RCVBUF)
    for s in (udp, tcp):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
    tcp.listen(1024)
    return udp, tcp


async def serve(proxy: DnsProxy, udp: socket.socket, tcp: socket.socket,
                tcp_idle_s: float = TCP_IDLE_S) -> tuple[asyncio.BaseTransport, asyncio.Server]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(proxy), sock=udp)
    server = await asyncio.start_server(lambda r, w: _tcp_client(proxy, r, w, tcp_idle_s), sock=tcp)
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

"""Half-open TCP probes: send a SYN, wait for SYN-ACK (open) or RST (closed).

The guest's kernel answers the SYN; our kernel has no socket for the SYN-ACK
and resets it, so the guest application never sees a connection (no accept(),
no log line). One raw socket serves every probe; a BPF filter hands it only
replies to our reserved source ports.
"""
from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import random
import socket
import struct
import time
from dataclasses import dataclass

SYN, RST, ACK = 0x02, 0x04, 0x10
SO_ATTACH_FILTER = 26
SOURCE_PORTS = 64          # reserved source ports; probes to one target rotate through them


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool
    outcome: str           # "syn-ack" | "rst" | "timeout" | "error"
    rtt_s: float


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_segment(src: bytes, dst: bytes, sport: int, dport: int, seq: int) -> bytes:
    """A SYN with an MSS option; src/dst are packed IPv4 addresses (checksum)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 6 << 4, SYN, 64240, 0, 0) + b"\x02\x04\x05\xb4"
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    csum = checksum(pseudo + header)
    return header[:16] + struct.pack("!H", csum) + header[18:]


def parse_reply(packet: bytes) -> tuple[bytes, int, int, int, int] | None:
    """(source address, source port, our port, ack, flags) of an IPv4 TCP packet."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 14:
        return None
    sport, dport, _seq, ack, _off, flags = struct.unpack_from("!HHIIBB", packet, ihl)
    return packet[12:16], sport, dport, ack, flags


def port_range_filter(lo: int, hi: int) -> bytes:
    """cBPF for a raw IPv4 socket: keep TCP packets whose destination port is in [lo, hi]."""
    insns = [
        (0xB1, 0, 0, 0),       # ldxb 4*([0]&0xf): X = IP header length
        (0x48, 0, 0, 2),       # ldh [x+2]: A = TCP destination port
        (0x35, 0, 2, lo),      # jge lo, next, drop
        (0x25, 1, 0, hi),      # jgt hi, drop, accept
        (0x06, 0, 0, 0xFFFF),  # accept
        (0x06, 0, 0, 0),       # drop
    ]
    return b"".join(struct.pack("HBBI", *i) for i in insns)


def attach_filter(sock: socket.socket, program: bytes) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return buf  # the kernel copies it, but keep it alive until setsockopt returns


def reserve_source_ports(count: int) -> tuple[list[socket.socket], int]:
    """Bind `count` consecutive TCP ports (never listened on), so the kernel
    neither hands them to connect() nor accepts SYN-ACKs for them."""
    for _ in range(50):
        base = random.randint(40000, 60999 - count)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s)
                s.bind(("0.0.0.0", port))
            return held, base
        except OSError:
            for s in held:
                s.close()
    raise OSError("could not reserve a block of source ports for probes")


class SynProber:
    """Create it on a thread inside the host netns (sockets keep their netns);
    then use it from the event loop."""

    def __init__(self) -> None:
        self._held, self.base_port = reserve_source_ports(SOURCE_PORTS)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        attach_filter(self.sock, port_range_filter(self.base_port, self.base_port + SOURCE_PORTS - 1))
        self._pending: dict[tuple[bytes, int, int], tuple[int, float, asyncio.Future[ProbeResult]]] = {}
        self._next_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0

    def _ensure_reader(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        for _, _, fut in self._pending.values():
            if not fut.done():
                fut.set_result(ProbeResult(False, "error", 0.0))
        self.sock.close()
        for s in self._held:
            s.close()

    def _source_port(self, dst: bytes, dport: int) -> int | None:
        for _ in range(SOURCE_PORTS):
            port = self.base_port + self._next_port
            self._next_port = (self._next_port + 1) % SOURCE_PORTS
            if (dst, dport, port) not in self._pending:
                return port
        return None

    async def probe(self, src_ip: str, dst_ip: str, dport: int, timeout: float) -> ProbeResult:
        return await self.start(src_ip, dst_ip, dport, timeout)

    def start(self, src_ip: str, dst_ip: str, dport: int, timeout: float) -> asyncio.Future[ProbeResult]:
        """Send one SYN; the future resolves on SYN-ACK, RST or timeout (never raises).
        src_ip is the address our kernel sends from (the slot's host veth address)."""
        loop = asyncio.get_running_loop()
        self._ensure_reader()
        fut: asyncio.Future[ProbeResult] = loop.create_future()
        src, dst = ipaddress.IPv4Address(src_ip).packed, ipaddress.IPv4Address(dst_ip).packed
        sport = self._source_port(dst, dport)
        if sport is None:  # 64 probes of one target already in flight
            fut.set_result(ProbeResult(False, "error", 0.0))
            return fut
        seq = random.getrandbits(32)
        key = (dst, dport, sport)
        start = time.monotonic()
        try:
            self.sock.sendto(syn_segment(src, dst, sport, dport, seq), (dst_ip, 0))
        except OSError:
            fut.set_result(ProbeResult(False, "error", 0.0))
            return fut
        self.sent += 1
        self._pending[key] = (seq, start, fut)
        timer = loop.call_later(timeout, self._expire, fut, start)
        fut.add_done_callback(lambda _f: (timer.cancel(), self._pending.pop(key, None)))
        return fut

    @staticmethod
    def _expire(fut: asyncio.Future[ProbeResult], start: float) -> None:
        if not fut.done():
            fut.set_result(ProbeResult(False, "timeout", time.monotonic() - start))

    def _on_readable(self) -> None:
        now = time.monotonic()
        for _ in range(256):
            try:
                packet = self.sock.recv(128)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            reply = parse_reply(packet)
            if reply is None:
                continue
            src, sport, dport, ack, flags = reply
            entry = self._pending.get((src, sport, dport))
            if entry is None:
                continue
            seq, start, fut = entry
            if ack != (seq + 1) & 0xFFFFFFFF or fut.done():
                continue
            if flags & SYN and flags & ACK:
                fut.set_result(ProbeResult(True, "syn-ack", now - start))
            elif flags & RST:
                fut.set_result(ProbeResult(False, "rst", now - start))



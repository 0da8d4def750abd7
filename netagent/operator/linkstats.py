"""Per-sandbox traffic rates, read-only: netlink link counters of each slot's
host veth, and conntrack NEW events (the kernel's own multicast group) for
new connections. Every function acts in the calling thread's netns; call them
through kernel.in_netns(config.host_netns, ...).

Directions are the sandbox's: tx = what the sandbox sent (the host veth's
rx), rx = what it received (the host veth's tx)."""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
import time
from dataclasses import dataclass

from pyroute2 import IPRoute

NETLINK_NETFILTER = 12
NFNLGRP_CONNTRACK_NEW = 1


@dataclass(frozen=True)
class Counters:
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True)
class Rates:
    rx_pps: float
    rx_bps: float       # bytes per second
    tx_pps: float
    tx_bps: float
    new_conns_ps: float | None = None   # None: not measured

    def to_dict(self) -> dict[str, float | None]:
        return {k: (round(v, 1) if v is not None else None) for k, v in vars(self).items()}


def read_counters(names: list[str]) -> dict[str, Counters]:
    """Counters of these links, seen from the sandbox (rx/tx swapped)."""
    wanted = set(names)
    out: dict[str, Counters] = {}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get("IFLA_IFNAME")
            if name in wanted:
                st = link.get("IFLA_STATS64") or link.get("IFLA_STATS") or {}
                out[name] = Counters(rx_packets=st.get("tx_packets", 0), rx_bytes=st.get("tx_bytes", 0),
                                     tx_packets=st.get("rx_packets", 0), tx_bytes=st.get("rx_bytes", 0))
    return out


class NewConnections:
    """Counts conntrack NEW events by sandbox IP (original source or
    destination, or reply source: egress, host-to-sandbox and DNAT ingress)."""

    def __init__(self, sandbox_ips: list[str]):
        self.ips = {ipaddress.IPv4Address(ip).packed: ip for ip in sandbox_ips}
        self.counts = dict.fromkeys(sandbox_ips, 0)
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 1 << (NFNLGRP_CONNTRACK_NEW - 1)))
        self.sock.setblocking(False)
        self.lost = False

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost = True   # some events were dropped: the rate is a floor
                    continue
                raise
            for ips in _event_addresses(data):
                for ip in {self.ips[a] for a in ips if a in self.ips}:
                    self.counts[ip] += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def sample(veths: dict[str, str], interval: float, connections: bool = True) -> dict[str, Rates]:
    """Rates per host veth over `interval` seconds; veths maps host veth -> sandbox IP."""
    conns = NewConnections(list(veths.values())) if connections and veths else None
    try:
        before, t0 = read_counters(list(veths)), time.monotonic()
        deadline = t0 + interval
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
            if conns:
                conns.drain()
        after, elapsed = read_counters(list(veths)), time.monotonic() - t0
        if conns:
            conns.drain()
    finally:
        if conns:
            conns.close()
    out = {}
    for veth, ip in veths.items():
        a, b = before.get(veth, Counters()), after.get(veth, Counters())
        out[veth] = Rates(rx_pps=(b.rx_packets - a.rx_packets) / elapsed, rx_bps=(b.rx_bytes - a.rx_bytes) / elapsed,
                          tx_pps=(b.tx_packets - a.tx_packets) / elapsed, tx_bps=(b.tx_bytes - a.tx_bytes) / elapsed,
                          new_conns_ps=conns.counts[ip] / elapsed if conns else None)
    return out


def _event_addresses(data: bytes) -> list[list[bytes]]:
    """For each conntrack message in a netlink datagram: the IPv4 addresses of
    its original and reply tuples (raw 4-byte form)."""
    out = []
    offset = 0
    while offset + 16 <= len(data):
        length = struct.unpack_from("=I", data, offset)[0]
        if length < 16:
            break
        msg = data[offset + 16 + 4:offset + length]   # skip nlmsghdr and nfgenmsg
        out.append(_tuple_addresses(msg))
        offset += (length + 3) & ~3
    return out


CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_TUPLE_IP = 1, 2, 1
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
NLA_TYPE_MASK = 0x3FFF


def _attrs(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        out.append((kind & NLA_TYPE_MASK, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return out


def _tuple_addresses(msg: bytes) -> list[bytes]:
    found = []
    for kind, body in _attrs(msg):
        if kind not in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
            continue
        for tkind, tbody in _attrs(body):
            if tkind == CTA_TUPLE_IP:
                found += [v for k, v in _attrs(tbody) if k in (CTA_IP_V4_SRC, CTA_IP_V4_DST) and len(v) == 4]
    return found

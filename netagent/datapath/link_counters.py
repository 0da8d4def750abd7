"""Byte counters of every link of the calling thread's netns, from one raw
RTM_GETLINK dump that reads only each link's name and its 64-bit stats.

Why not pyroute2's `get_links()`: it decodes every attribute of every link
(inet6 devconf arrays and all), ~2.3 s of CPU per dump of 4,000+ links at
2,000 sandboxes (py-spy of an idle agent: most of the cleaner thread's
samples), holding the GIL so API calls stalled up to 1 s behind each metrics
refresh (docs/history/performance-log.md, "Metrics refresh"). Parsing is pure (`parse`);
`dump` is the one call that does I/O.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME, IFLA_STATS, IFLA_STATS64 = 3, 7, 23
_HEADER = struct.Struct("=IHHII")   # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_ATTR = struct.Struct("=HH")


def request(seq: int = 1) -> bytes:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return _HEADER.pack(_HEADER.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse(data: bytes, out: dict[str, tuple[int, int]], seq: int = 1) -> bool:
    """Add ifname -> (rx_bytes, tx_bytes) of each link message in `data` to
    `out`; True once the dump is done. OSError for an error reply."""
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, pos)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, "malformed netlink reply")
        if msg_seq == seq:
            if kind == NLMSG_DONE:
                return True
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, pos + _HEADER.size)
                raise OSError(-code, f"RTM_GETLINK dump: {os.strerror(-code)}")
            if kind == RTM_NEWLINK:
                _link(data, pos + _HEADER.size + _IFINFO.size, pos + length, out)
        pos += (length + 3) & ~3
    return False


def _link(data: bytes, attr: int, end: int, out: dict[str, tuple[int, int]]) -> None:
    name, counts = None, None
    while attr + 4 <= end:
        alen, atype = _ATTR.unpack_from(data, attr)
        if alen < 4:
            break
        kind = atype & 0x3FFF
        if kind == IFLA_IFNAME:
            name = data[attr + 4:attr + alen].split(b"\0", 1)[0].decode()
        elif kind == IFLA_STATS64 and alen >= 4 + 32:   # rx_packets, tx_packets, rx_bytes, tx_bytes
            counts = struct.unpack_from("=QQ", data, attr + 4 + 16)
            if name is not None:
                break   # the kernel puts the name first: the rest (link info, inet6 devconf...) is not needed
        elif kind == IFLA_STATS and counts is None and alen >= 4 + 16:
            counts = struct.unpack_from("=II", data, attr + 4 + 8)
        attr += (alen + 3) & ~3
    if name and counts is not None:
        out[name] = (int(counts[0]), int(counts[1]))


def dump() -> dict[str, tuple[int, int]]:
    """ifname -> (rx_bytes, tx_bytes) of every link in the calling thread's netns."""
    out: dict[str, tuple[int, int]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.sendto(request(), (0, 0))
        while not parse(sock.recv(1 << 20), out):
            pass
    return out

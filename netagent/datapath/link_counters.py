"""Byte counters of every link of the calling thread's netns, from one raw
RTM_GETLINK dump that reads only each link's name and its 64-bit stats.

Why not pyroute2's `get_links()`: it decodes every attribute of every link
(inet6 devconf arrays and all), ~2.3 s of CPU per dump of 4,000+ links at
2,000 sandboxes (py-spy of an idle agent: most of the cleaner thread's
samples), holding the GIL so API calls stalled up to 1 s behind each metrics
refresh (docs/history/performance-log.md, "Metrics refresh"). Parsing is pure (`parse`);
`dump` is the one call that does I/O.

Why `LinkCounters` reads RTM_GETSTATS: even raw, a link dump makes the kernel
format every attribute of every link (1.5 KB a link, 6 MB at 4,000 links:
27 ms of thread CPU, 43 ms with the parse, every metrics refresh: over 1% of
a core on an idle host). The stats dump asked for the 64-bit link stats only
is 232 bytes a link (4.4 ms) but names no link: names come from a link dump
kept by index, made again only when an index it does not know shows up (a
slot built or rebuilt; the kernel hands out indexes cyclically, so an index
is not reused by another link meanwhile).
"""
from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWSTATS, RTM_GETSTATS = 92, 94
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_IFNAME, IFLA_STATS, IFLA_STATS64 = 3, 7, 23
IFLA_STATS_LINK_64 = 1            # in RTM_NEWSTATS: struct rtnl_link_stats64
_HEADER = struct.Struct("=IHHII")   # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_STATS_MSG = struct.Struct("=BxHII")  # if_stats_msg: family, pad, ifindex, filter_mask
_ATTR = struct.Struct("=HH")


def request(seq: int = 1) -> bytes:
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return _HEADER.pack(_HEADER.size + len(body), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def stats_request(seq: int = 1) -> bytes:
    """A dump of every link's 64-bit stats and nothing else."""
    body = _STATS_MSG.pack(socket.AF_UNSPEC, 0, 0, 1 << (IFLA_STATS_LINK_64 - 1))
    return _HEADER.pack(_HEADER.size + len(body), RTM_GETSTATS, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _messages(data: bytes, seq: int, kind: int, what: str) -> Iterator[tuple[int, int] | None]:
    """(start, end) of each `kind` message of our dump in `data`; None once it is done."""
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, msg_kind, _, msg_seq, _ = _HEADER.unpack_from(data, pos)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, "malformed netlink reply")
        if msg_seq == seq:
            if msg_kind == NLMSG_DONE:
                yield None
                return
            if msg_kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, pos + _HEADER.size)
                raise OSError(-code, f"{what} dump: {os.strerror(-code)}")
            if msg_kind == kind:
                yield pos + _HEADER.size, pos + length
        pos += (length + 3) & ~3


def parse(data: bytes, out: dict[str, tuple[int, int]], seq: int = 1,
          names: dict[int, str] | None = None) -> bool:
    """Add ifname -> (rx_bytes, tx_bytes) of each link message in `data` to
    `out` (and index -> ifname to `names`); True once the dump is done.
    OSError for an error reply."""
    for span in _messages(data, seq, RTM_NEWLINK, "RTM_GETLINK"):
        if span is None:
            return True
        name = _link(data, span[0] + _IFINFO.size, span[1], out)
        if names is not None and name:
            names[_IFINFO.unpack_from(data, span[0])[2]] = name
    return False


def parse_stats(data: bytes, out: dict[int, tuple[int, int]], seq: int = 1) -> bool:
    """Add ifindex -> (rx_bytes, tx_bytes) of each RTM_NEWSTATS message in
    `data` to `out`; True once the dump is done. OSError for an error reply."""
    for span in _messages(data, seq, RTM_NEWSTATS, "RTM_GETSTATS"):
        if span is None:
            return True
        start, end = span
        index = _STATS_MSG.unpack_from(data, start)[2]
        attr = start + _STATS_MSG.size
        while attr + 4 <= end:
            alen, atype = _ATTR.unpack_from(data, attr)
            if alen < 4:
                break
            if atype & 0x3FFF == IFLA_STATS_LINK_64 and alen >= 4 + 32:   # rx/tx packets, rx/tx bytes
                out[index] = struct.unpack_from("=QQ", data, attr + 4 + 16)
                break
            attr += (alen + 3) & ~3
    return False


def _link(data: bytes, attr: int, end: int, out: dict[str, tuple[int, int]]) -> str | None:
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
    return name


def dump(names: dict[int, str] | None = None) -> dict[str, tuple[int, int]]:
    """ifname -> (rx_bytes, tx_bytes) of every link in the calling thread's
    netns (and index -> ifname into `names`)."""
    out: dict[str, tuple[int, int]] = {}
    _read(request(), lambda data: parse(data, out, names=names))
    return out


def _read(req: bytes, parse_some: Callable[[bytes], bool]) -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.settimeout(5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.sendto(req, (0, 0))
        while not parse_some(sock.recv(1 << 20)):
            pass


class LinkCounters:
    """ifname -> (rx_bytes, tx_bytes) of every link, from a stats dump and the
    names it keeps by index (the module's docstring says why). One netns: use
    it from one thread that stays there."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.name_dumps = 0

    def read(self) -> dict[str, tuple[int, int]]:
        by_index: dict[int, tuple[int, int]] = {}
        _read(stats_request(), lambda data: parse_stats(data, by_index))
        if not by_index.keys() <= self.names.keys():
            names: dict[int, str] = {}
            dump(names)
            self.names, self.name_dumps = names, self.name_dumps + 1
        names = self.names
        return {names[i]: c for i, c in by_index.items() if i in names}

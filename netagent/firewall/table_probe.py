"""Does an nft table exist: one NFT_MSG_GETTABLE request on a netfilter netlink
socket. `netagent status` asks this; libnftables' `list tables` fills a cache
of the whole ruleset first, 0.15-0.3 s with 2,000 sandboxes' elements
(docs/history/performance-log.md, "CLI start-up"). Building and reading the messages is
pure; table_exists is the one call that does I/O, in the calling thread's netns.
"""
from __future__ import annotations

import errno
import os
import struct

from . import nlsock
from .generation import _HEADER, _NFGEN, NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST, NLMSG_ERROR

NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFTA_TABLE_NAME = 1
NFTA_TABLE_HANDLE = 4
NLM_F_ACK = 0x4
FAMILIES = {"ip": 2, "inet": 1, "ip6": 10, "arp": 3, "bridge": 7, "netdev": 5}



def request(family: str, name: str, seq: int = 1) -> bytes:
    """The GETTABLE message for `family` `name` (ValueError on bad input)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown nft family {family!r} (known: {', '.join(FAMILIES)})")
    raw = name.encode()
    if not raw or len(raw) > 255 or b"\0" in raw:
        raise ValueError(f"bad nft table name {name!r}")
    value = raw + b"\0"
    attr = struct.pack("=HH", 4 + len(value), NFTA_TABLE_NAME) + value + b"\0" * (-len(value) % 4)
    body = _NFGEN.pack(FAMILIES[family], 0, 0) + attr
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def answer(data: bytes, seq: int = 1) -> bool | None:
    """What the kernel's reply says: True (the table came back), False (ENOENT),
    None (only an ack so far: read on). OSError for any other error."""
    found = lookup(data, seq)
    return None if found is None else found[0]


def lookup(data: bytes, seq: int = 1) -> tuple[bool, int | None] | None:
    """(True, the table's handle) or (False, None) for ENOENT; None: read on."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, "malformed netlink reply")
        if msg_seq == seq:
            if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE:
                return True, _handle(data, offset + _HEADER.size + _NFGEN.size, offset + length)
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                if code == -errno.ENOENT:
                    return False, None
                if code != 0:
                    raise OSError(-code, f"nft GETTABLE: {os.strerror(-code)}")
        offset += (length + 3) & ~3
    return None


def _handle(data: bytes, attr: int, end: int) -> int | None:
    while attr + 4 <= end:
        alen, atype = struct.unpack_from("=HH", data, attr)
        if alen < 4:
            return None
        if atype & 0x3FFF == NFTA_TABLE_HANDLE and alen >= 12:
            return int(struct.unpack_from("!Q", data, attr + 4)[0])
        attr += (alen + 3) & ~3
    return None


def table_handle(family: str, name: str) -> int | None:
    """The table's handle in the calling thread's netns (None: no such table).
    A new table (after a flush or a reload) gets a new one."""
    exists, handle = _ask(family, name)
    if exists and handle is None:
        raise OSError(errno.EPROTO, "nft GETTABLE: a table without a handle")
    return handle


def table_exists(family: str, name: str) -> bool:
    """Ask the kernel of the calling thread's netns (root: CAP_NET_ADMIN)."""
    return _ask(family, name)[0]


def _ask(family: str, name: str) -> tuple[bool, int | None]:
    request(family, name)   # bad input refused before any I/O
    return nlsock.ask(lambda seq: request(family, name, seq), lookup)

"""Is one element in an nft set: one NFT_MSG_GETSETELEM request naming its
key, on a netfilter netlink socket. libnftables' `get element` fills its
cache with every set's elements first (about 65 ms at 2,000 sandboxes, per
call): the slot cleaner asked it once per released slot and spent most of
its time there (docs/performance.md, "Release at 2,000 sandboxes").
Building and reading the messages is pure; `has_element` is the one call
that does I/O, in the calling thread's netns.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct

from .generation import _HEADER, _NFGEN, NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST, NLMSG_ERROR
from .nfnetlink import attr
from .table_probe import FAMILIES, NLM_F_ACK

NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = 12, 13
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1
NLA_F_NESTED = 0x8000


def ipv4_key(text: str) -> bytes | None:
    """The key bytes of a set keyed by one IPv4 address (None for any other key)."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        return None


def _name(value: str) -> bytes:
    raw = value.encode()
    if not raw or len(raw) > 255 or b"\0" in raw:
        raise ValueError(f"bad nft name {value!r}")
    return raw + b"\0"


def request(family: str, table: str, set_name: str, key: bytes, seq: int = 1) -> bytes:
    """The GETSETELEM message for one key (ValueError on bad input)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown nft family {family!r} (known: {', '.join(FAMILIES)})")
    if not key or len(key) > 64:
        raise ValueError(f"bad nft element key of {len(key)} bytes")
    elem = attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, attr(NFTA_DATA_VALUE, key))
    body = (_NFGEN.pack(FAMILIES[family], 0, 0)
            + attr(NFTA_SET_ELEM_LIST_TABLE, _name(table))
            + attr(NFTA_SET_ELEM_LIST_SET, _name(set_name))
            + attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, attr(NFTA_LIST_ELEM | NLA_F_NESTED, elem)))
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def answer(data: bytes, seq: int = 1) -> bool | None:
    """True (the element came back), False (ENOENT: no such element, set or
    table), None (nothing for us yet: read on). OSError for any other error."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, "malformed netlink reply")
        if msg_seq == seq:
            if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM:
                return True
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                if code == -errno.ENOENT:
                    return False
                if code != 0:
                    raise OSError(-code, f"nft GETSETELEM: {os.strerror(-code)}")
                return False   # the ack, with no element before it
        offset += (length + 3) & ~3
    return None


def has_element(family: str, table: str, set_name: str, key: bytes) -> bool:
    """Ask the kernel of the calling thread's netns (root: CAP_NET_ADMIN)."""
    msg = request(family, table, set_name, key)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(5)
        sock.sendto(msg, (0, 0))
        while True:
            found = answer(sock.recv(65536))
            if found is not None:
                return found

"""Is one element in an nft set: one NFT_MSG_GETSETELEM request naming its
key, on a netfilter netlink socket. libnftables' `get element` fills its
cache with every set's elements first (about 65 ms at 2,000 sandboxes, per
call): the slot cleaner asked it once per released slot and spent most of
its time there (docs/history/performance-log.md, "Closing netlink sockets").
Building and reading the messages is pure; `has_element` is the one call
that does I/O, in the calling thread's netns.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import struct

from . import nlsock
from .generation import _HEADER, _NFGEN, NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST, NLMSG_ERROR
from .nfnetlink import attr, attrs, cstring, first
from .table_probe import FAMILIES, NLM_F_ACK

NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = 12, 13
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_EXPR, NFTA_SET_ELEM_EXPRESSIONS = 7, 11
NFTA_DATA_VALUE = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2
NLA_F_NESTED = 0x8000


def ipv4_key(text: str) -> bytes | None:
    """The key bytes of a set keyed by one IPv4 address (None for any other key)."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ValueError:
        return None


def request(family: str, table: str, set_name: str, key: bytes, seq: int = 1) -> bytes:
    """The GETSETELEM message for one key (ValueError on bad input)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown nft family {family!r} (known: {', '.join(FAMILIES)})")
    if not key or len(key) > 64:
        raise ValueError(f"bad nft element key of {len(key)} bytes")
    elem = attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, attr(NFTA_DATA_VALUE, key))
    body = (_NFGEN.pack(FAMILIES[family], 0, 0)
            + attr(NFTA_SET_ELEM_LIST_TABLE, cstring(table))
            + attr(NFTA_SET_ELEM_LIST_SET, cstring(set_name))
            + attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, attr(NFTA_LIST_ELEM | NLA_F_NESTED, elem)))
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def answer(data: bytes, seq: int = 1) -> bool | None:
    """True (the element came back), False (ENOENT: no such element, set or
    table), None (nothing for us yet: read on). OSError for any other error."""
    found = element(data, seq)
    return found if found is None or found is False else True


def element(data: bytes, seq: int = 1) -> bytes | bool | None:
    """The element's attributes (NFTA_LIST_ELEM's payload) when it came back,
    False (ENOENT), None (read on). OSError for any other error."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, "malformed netlink reply")
        if msg_seq == seq:
            if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM:
                body = data[offset + _HEADER.size + _NFGEN.size:offset + length]
                elements = first(body, NFTA_SET_ELEM_LIST_ELEMENTS)
                return (first(elements, NFTA_LIST_ELEM) if elements else None) or b""
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                if code == -errno.ENOENT:
                    return False
                if code != 0:
                    raise OSError(-code, f"nft GETSETELEM: {os.strerror(-code)}")
                return False   # the ack, with no element before it
        offset += (length + 3) & ~3
    return None


def counter_of(elem: bytes) -> tuple[int, int] | None:
    """(packets, bytes) of the element's counter expression (None: it has none)."""
    exprs = [v for t, v in attrs(elem) if t & 0x3FFF == NFTA_SET_ELEM_EXPR]
    for t, v in attrs(elem):
        if t & 0x3FFF == NFTA_SET_ELEM_EXPRESSIONS:
            exprs += [e for k, e in attrs(v) if k & 0x3FFF == NFTA_LIST_ELEM]
    for expr in exprs:
        if first(expr, NFTA_EXPR_NAME) == b"counter\0":
            data = first(expr, NFTA_EXPR_DATA) or b""
            nbytes, packets = first(data, NFTA_COUNTER_BYTES), first(data, NFTA_COUNTER_PACKETS)
            if nbytes is not None and packets is not None and len(nbytes) == len(packets) == 8:
                return struct.unpack("!Q", packets)[0], struct.unpack("!Q", nbytes)[0]
    return None


def _get(family: str, table: str, set_name: str, key: bytes) -> bytes | bool:
    request(family, table, set_name, key)   # bad input refused before any I/O
    return nlsock.ask(lambda seq: request(family, table, set_name, key, seq), element)


def has_element(family: str, table: str, set_name: str, key: bytes) -> bool:
    """Ask the kernel of the calling thread's netns (root: CAP_NET_ADMIN), on
    the thread's kept socket (firewall/nlsock.py says why)."""
    return _get(family, table, set_name, key) is not False


def counters(family: str, table: str, set_names: list[str], ips: list[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """set -> IPv4 key -> (packets, bytes) for these keys of counter sets,
    one keyed request each (absent keys and sets are left out): what closing
    a few released sandboxes needs, without listing thousands of elements."""
    keys = {ip: ipv4_key(ip) for ip in ips}
    if bad := [ip for ip, key in keys.items() if key is None]:
        raise ValueError(f"not IPv4 keys: {bad}")
    out: dict[str, dict[str, tuple[int, int]]] = {name: {} for name in set_names}
    for name in set_names:
        for ip, key in keys.items():
            elem = _get(family, table, name, key or b"")
            if elem is not False and (count := counter_of(elem)) is not None:
                out[name][ip] = count
    return out

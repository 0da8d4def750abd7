"""The counters of every element of the usage sets (`type ipv4_addr; counter;`),
from one NFT_MSG_GETSETELEM dump per set on the thread's kept netlink socket.

Why not libnftables' `list set`: it fills its cache with every set's elements
first, formats text that we parse again, and starts over whenever a commit
moves the ruleset generation meanwhile: the six listings took 54 ms at 2,000
sandboxes on a quiet host and 109-297 ms under churn (20 commits/s), on the
cleaner thread; the dumps take 28 ms of thread CPU either way, and at 10,000
sandboxes under churn 0.2 s against 10 s and more (docs/history/performance-log.md,
"Usage accounting: the cost of a reading").

Why a fast path: reading each element with the generic attribute walker
(nfnetlink.attrs) costs ~17 us of Python, 211 ms for 6 x 2,000 elements,
worse than libnftables. The kernel (6.18 here) sends every element of such a
set in one 60-byte layout, so a message whose elements all match it is
checked by one regex and unpacked by one struct (0.4-0.9 us an element); any
other element (an attribute a kernel adds, a padding attribute, a catch-all)
goes through element_probe.counter_of. A dump a commit cut is read again
(nlsock.dump_or_cut, nfnetlink.dump_reader: it can leave out elements), up
to USAGE_DUMP_TRIES times; then its elements are taken as they are (each
one's counters are whole) in a `CutDump`, whose missing elements may still be
there: at 10,000 sandboxes the allocates of a fill cut a reading's six dumps
32 times in a row, and the reading gave up (docs/performance.md).

Why a message read last time is not parsed again: on an idle host the
counters do not move, and a reading at 2,000 sandboxes parsed the same 24
messages every 2 s (about 1% of a core with the meter's fold). `counters`
keeps each set's last messages (bytes) with their elements, and takes a
message that is byte for byte the same from there; a set whose messages are
all the same gives the same dict back (the caller must not change it), so
the meter's comparison with its last reading is an identity check.

Building and reading the messages is pure; `counters` does the I/O, in the
calling thread's netns.
"""
from __future__ import annotations

import functools
import re
import socket
import struct
from collections.abc import Iterable, Sequence

from . import nlsock
from .element_probe import (
    NFT_MSG_GETSETELEM,
    NFT_MSG_NEWSETELEM,
    NFTA_DATA_VALUE,
    NFTA_LIST_ELEM,
    NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE,
    counter_of,
)
from .generation import _HEADER, _NFGEN, NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST
from .nfnetlink import NLM_F_DUMP, attr, attrs, cstring, first
from .table_probe import FAMILIES

NEWSETELEM = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM

# One element's payload (inside its NFTA_LIST_ELEM) as 6.x kernels send it:
# NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE: 4 bytes },
# NFTA_SET_ELEM_EXPR { NFTA_EXPR_NAME "counter", NFTA_EXPR_DATA {
#     NFTA_COUNTER_BYTES: be64, NFTA_COUNTER_PACKETS: be64 } }.
# Nests may or may not carry NLA_F_NESTED ([\x00\x80]); no NFTA_COUNTER_PAD
# (the kernel adds it only where unaligned u64s are slow).
_PAYLOAD = (rb"\x0c\x00\x01[\x00\x80]\x08\x00\x01\x00.{4}"
            rb",\x00\x07[\x00\x80]\x0c\x00\x01\x00counter\x00\x1c\x00\x02[\x00\x80]"
            rb"\x0c\x00\x01\x00.{8}\x0c\x00\x02\x00.{8}")
_ONE_ELEMENT = re.compile(_PAYLOAD, re.DOTALL)
_ALL_ELEMENTS = re.compile(rb"(?:<\x00\x01[\x00\x80]" + _PAYLOAD + rb")*", re.DOTALL)   # 60-byte NFTA_LIST_ELEMs
_ELEMENT, _ELEMENT_SIZE = "12x4s24xQ4xQ", 60      # key, bytes, packets of one such NFTA_LIST_ELEM
_PAYLOAD_FIELDS = struct.Struct("!8x4s24xQ4xQ")    # the same, past the NFTA_LIST_ELEM header
_KEY_TEXT: dict[bytes, str] = {}                   # the keys are the same sandbox IPs reading after reading


def request(family: str, table: str, set_name: str, seq: int = 1) -> bytes:
    """The GETSETELEM dump of one set's elements (ValueError on bad input)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown nft family {family!r} (known: {', '.join(FAMILIES)})")
    body = (_NFGEN.pack(FAMILIES[family], 0, 0)
            + attr(NFTA_SET_ELEM_LIST_TABLE, cstring(table))
            + attr(NFTA_SET_ELEM_LIST_SET, cstring(set_name)))
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


USAGE_DUMP_TRIES = 4   # whole dumps tried before a cut one is taken
Items = tuple[tuple[str, tuple[int, int]], ...]


class CutDump(dict[str, tuple[int, int]]):
    """A set's elements from a dump that commits cut: each one read is right,
    but an element missing from it may still be in the set."""
# (family, table, set) -> its last whole dump's messages with their elements, and what they read as
_LAST: dict[tuple[str, str, str], tuple[dict[bytes, Items], dict[str, tuple[int, int]]]] = {}


def element_counters(messages: Iterable[bytes], memo: dict[bytes, Items] | None = None,
                     seen: dict[bytes, Items] | None = None) -> dict[str, tuple[int, int]]:
    """IPv4 key -> (packets, bytes) of each counted element in these NEWSETELEM
    messages' attributes (elements without a counter or an IPv4 key are left out).
    A message found in `memo` is taken from there; each message's elements are
    put in `seen` (the next call's memo)."""
    out: dict[str, tuple[int, int]] = {}
    for body in messages:
        items = memo.get(body) if memo else None
        if items is None:
            items = _message_counters(body)
        if seen is not None:
            seen[body] = items
        out.update(items)
    return out


def _message_counters(body: bytes) -> Items:
    out: dict[str, tuple[int, int]] = {}
    ntoa = socket.inet_ntoa
    elements = first(body, NFTA_SET_ELEM_LIST_ELEMENTS)
    if not elements:
        return ()
    if _ALL_ELEMENTS.fullmatch(elements):
        # one unpack and C-level zips: a Python loop over the elements cost twice as much
        fields = _elements(len(elements) // _ELEMENT_SIZE).unpack(elements)
        return tuple(zip(_texts(fields[0::3]), zip(fields[2::3], fields[1::3], strict=True), strict=True))
    for kind, elem in attrs(elements):
        if kind & 0x3FFF != NFTA_LIST_ELEM:
            continue
        if _ONE_ELEMENT.fullmatch(elem):
            key, nbytes, packets = _PAYLOAD_FIELDS.unpack(elem)
            out[ntoa(key)] = (packets, nbytes)
            continue
        key = first(first(elem, NFTA_SET_ELEM_KEY) or b"", NFTA_DATA_VALUE)
        if key is not None and len(key) == 4 and (count := counter_of(elem)) is not None:
            out[ntoa(key)] = count
    return tuple(out.items())


@functools.lru_cache(maxsize=1024)   # a 32 KiB datagram holds at most 546 elements
def _elements(count: int) -> struct.Struct:
    return struct.Struct("!" + _ELEMENT * count)


def _texts(keys: Sequence[bytes]) -> list[str]:
    """Dotted text of 4-byte keys (inet_ntoa was a third of the parse: remembered)."""
    try:
        return list(map(_KEY_TEXT.__getitem__, keys))
    except KeyError:
        if len(_KEY_TEXT) > 1 << 16:
            _KEY_TEXT.clear()
        texts = list(map(socket.inet_ntoa, keys))
        _KEY_TEXT.update(zip(keys, texts, strict=True))
        return texts


def counters(family: str, table: str, set_names: Iterable[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """set -> IPv4 key -> (packets, bytes) of every element of these counter
    sets ({} for a set or table that is not there; a `CutDump` when commits
    kept cutting its dump), one dump each, on the calling thread's kept
    socket (firewall/nlsock.py says why)."""
    names = list(set_names)
    for name in names:
        request(family, table, name)   # bad input refused before any I/O
    return {name: _read_set(family, table, name) for name in names}


def _read_set(family: str, table: str, name: str) -> dict[str, tuple[int, int]]:
    complete, bodies = nlsock.dump_or_cut(lambda seq: request(family, table, name, seq), NEWSETELEM,
                                          "nft GETSETELEM", USAGE_DUMP_TRIES)
    memo, last = _LAST.get((family, table, name), ({}, {}))
    if complete and len(bodies) == len(memo) and all(body in memo for body in bodies):
        return last   # nothing moved (bytes to bytes: right whichever thread or netns read them)
    seen: dict[bytes, Items] = {}
    out = element_counters(bodies, memo, seen)
    if complete:
        _LAST[(family, table, name)] = (seen, out)
    return out if complete else CutDump(out)

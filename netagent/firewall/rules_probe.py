"""The fingerprint of an nft table's rules (the host table's drift check), from
netlink requests on the thread's kept socket: the table itself (GETTABLE), then
dumps of its chains, sets and maps (definitions, never elements), rules, named
objects and flowtables.

Why not libnftables' terse, stateless `list table`: it fetches every set
element into its cache first, 82 ms a call at 2,000 sandboxes (~26,000
elements) on a quiet host, and starts over whenever the ruleset generation
moves meanwhile: under churn (20 commits/s) a benchmark measured calls of up to
1,272 ms, on the host thread that also applies every allocate's transaction
(docs/history/performance-log.md, "Ruleset watch"). These dumps carry no elements.

What is hashed defines the rules. Left out, because traffic or elements change
it: use counts, sets' element counts, base chains' counters, the data of
counter, quota and last expressions (limit and connlimit dump config only),
the data of named objects; also the set backend (a kernel address) and
alignment padding. Handles stay in: a re-created table or rule changes the
fingerprint. Building and reading messages is pure; `fingerprint` does the
I/O, in the calling thread's netns.
"""
from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable
from typing import NamedTuple

from . import nlsock
from .generation import _HEADER, _NFGEN, NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST
from .nfnetlink import NLM_F_ACK, NLM_F_DUMP, attr, attrs, cstring, first, spans
from .table_probe import FAMILIES

NFT_MSG_GETTABLE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET = 1, 4, 7, 10
NFT_MSG_GETOBJ, NFT_MSG_GETFLOWTABLE = 19, 23
TABLE_ATTR = 1   # NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,OBJ_TABLE,FLOWTABLE_TABLE}
NFTA_TABLE_USE, NFTA_TABLE_PAD = 3, 5
NFTA_CHAIN_USE, NFTA_CHAIN_COUNTERS, NFTA_CHAIN_PAD = 6, 8, 9
NFTA_RULE_EXPRESSIONS, NFTA_RULE_PAD = 4, 8
NFTA_SET_PAD, NFTA_SET_EXPR, NFTA_SET_EXPRESSIONS, NFTA_SET_TYPE, NFTA_SET_COUNT = 14, 17, 18, 19, 20
NFTA_OBJ_DATA, NFTA_OBJ_USE, NFTA_OBJ_PAD = 4, 5, 7
NFTA_FLOWTABLE_USE, NFTA_FLOWTABLE_PAD = 4, 6
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_DYNSET_EXPR, NFTA_DYNSET_EXPRESSIONS = 7, 10
# Their dump is live state (packets and bytes, bytes consumed, last seen).
STATEFUL = frozenset({b"counter\0", b"quota\0", b"last\0"})
# Reads of one dump before giving up. Any commit, elements too, interrupts a
# dump it lands inside (the rules dump is 3 chunks): at ~500 element commits/s
# from another process a quarter of the rules dumps were, and 5 tries failed
# 7 calls of 200. No bound outlasts every commit rate: the agent's own commits
# wait (HostTable.fingerprint holds the generation watch's lock).
TRIES = 10

def _canonical(body: bytes, left_out: frozenset[int], rewrite: dict[int, Callable[[bytes], bytes]]) -> bytes:
    """The attributes but those left out, rewritten where asked, the rest as they came."""
    out = []
    for kind, start, end in spans(body):
        if (kind := kind & 0x3FFF) in rewrite:
            out.append(attr(kind, rewrite[kind](body[start + 4:end])))
        elif kind not in left_out:
            out.append(body[start:(end + 3) & ~3])   # with its padding, as attr() writes it
    return b"".join(out)


def expression(buf: bytes) -> bytes:
    """One expression (name, data) without its state; a dynset's own
    expressions (the templates of the elements it adds) likewise."""
    name = first(buf, NFTA_EXPR_NAME) or b""
    if name in STATEFUL:
        return attr(NFTA_EXPR_NAME, name)
    if name == b"dynset\0":
        return _canonical(buf, frozenset(), {NFTA_EXPR_DATA: lambda data: _canonical(
            data, frozenset(), {NFTA_DYNSET_EXPR: expression, NFTA_DYNSET_EXPRESSIONS: expressions})})
    return buf


def expressions(buf: bytes) -> bytes:
    """A list of expressions (NFTA_LIST_ELEM each), each without its state."""
    if not any(name in buf for name in STATEFUL):   # most rules: no name of one anywhere, nothing to strip
        return buf
    return b"".join(attr(k, expression(v)) for k, v in attrs(buf))


class Part(NamedTuple):
    get: int                      # NFT_MSG_GET*; its reply is NFT_MSG_NEW* = get - 1
    left_out: frozenset[int]      # attributes that change with traffic or elements
    rewrite: dict[int, Callable[[bytes], bytes]]


# In hashing order. The first (the table) is a single GETTABLE, the rest dumps.
PARTS = (
    Part(NFT_MSG_GETTABLE, frozenset({NFTA_TABLE_USE, NFTA_TABLE_PAD}), {}),
    Part(NFT_MSG_GETCHAIN, frozenset({NFTA_CHAIN_USE, NFTA_CHAIN_COUNTERS, NFTA_CHAIN_PAD}), {}),
    Part(NFT_MSG_GETSET, frozenset({NFTA_SET_TYPE, NFTA_SET_COUNT, NFTA_SET_PAD}),
         {NFTA_SET_EXPR: expression, NFTA_SET_EXPRESSIONS: expressions}),
    Part(NFT_MSG_GETRULE, frozenset({NFTA_RULE_PAD}), {NFTA_RULE_EXPRESSIONS: expressions}),
    Part(NFT_MSG_GETOBJ, frozenset({NFTA_OBJ_DATA, NFTA_OBJ_USE, NFTA_OBJ_PAD}), {}),
    Part(NFT_MSG_GETFLOWTABLE, frozenset({NFTA_FLOWTABLE_USE, NFTA_FLOWTABLE_PAD}), {}),
)


def request(part: Part, family: str, table: str, seq: int = 1) -> bytes:
    """The request for one part of `family` `table` (ValueError on bad input)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown nft family {family!r} (known: {', '.join(FAMILIES)})")
    body = _NFGEN.pack(FAMILIES[family], 0, 0) + attr(TABLE_ATTR, cstring(table))
    # the single GETTABLE asks for an ack: it ends the reply as DONE ends a dump
    flags = NLM_F_REQUEST | (NLM_F_DUMP if part.get != NFT_MSG_GETTABLE else NLM_F_ACK)
    kind = (NFNL_SUBSYS_NFTABLES << 8) | part.get
    return _HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body


def of_table(table: str, objects: list[bytes]) -> list[bytes]:
    """The objects of this table: the kernel (6.18) filters rules, sets and
    objects by table, but dumps every table's chains (flowtables: this kernel
    cannot make one, so not seen)."""
    name = cstring(table)
    return [body for body in objects if first(body, TABLE_ATTR) == name]


def canonical(part: Part, body: bytes) -> bytes:
    """One object as hashed: what changes with traffic or elements left out."""
    return _canonical(body, part.left_out, part.rewrite)


def digest(objects: list[list[bytes]]) -> str:
    """16 hex digits (as ruleset.fingerprint) of every part's objects, in order."""
    h = hashlib.sha256()
    for part, bodies in zip(PARTS, objects, strict=True):
        for body in bodies:
            obj = canonical(part, body)
            h.update(struct.pack("=II", part.get, len(obj)) + obj)
    return h.hexdigest()[:16]


def _read(part: Part, family: str, table: str, tries: int) -> list[bytes] | None:
    """The table's objects of one part (None: no such table), on the thread's
    kept socket. A dump interrupted by a commit is read again; OSError after
    `tries` (nlsock.dump)."""
    reply = (NFNL_SUBSYS_NFTABLES << 8) | (part.get - 1)
    bodies = nlsock.dump(functools.partial(request, part, family, table), reply, f"nft table {table}", tries)
    if part.get == NFT_MSG_GETTABLE:
        return bodies or None   # ENOENT reads as an empty dump
    return of_table(table, bodies)


def fingerprint(family: str, table: str, tries: int = TRIES) -> str | None:
    """The table's rules fingerprint in the calling thread's netns (None: no
    such table). Parts are read one after another, each consistent in itself.
    A commit between two may make a mix of before and after: element commits
    change no part, and a rule change shows in any part read after it (one
    read before it is the next check's: the keeper reads the generation first)."""
    request(PARTS[0], family, table)   # bad input refused before any I/O
    objects = []
    for part in PARTS:
        if (found := _read(part, family, table, tries)) is None:
            return None
        objects.append(found)
    return digest(objects)

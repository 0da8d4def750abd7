"""The shape of every set in one nft table, as the kernel holds it: each key
field's datatype, the map data's, and the flags. One NFT_MSG_GETSET dump.

Why: a raw element batch (firewall/element_batch.py) must lay out key bytes
exactly as nft would (an ifname is 16 bytes, a mark host-endian, a port
big-endian, each field of a concatenation padded to 4), and the element's
Python value does not say which (an int may be a mark or a port). nft puts
its datatype id in NFTA_SET_KEY_TYPE; a concatenation's id is its fields'
ids, TYPE_BITS (6) bits each, first field highest.

Building and reading the messages is pure; `read_shapes` does the I/O, in
the calling thread's netns.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from . import nlsock
from .generation import _HEADER, _NFGEN, NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST
from .nfnetlink import NLM_F_DUMP, attr, attrs, cstring
from .table_probe import FAMILIES

NFT_MSG_NEWSET, NFT_MSG_GETSET = 9, 10
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS = 1, 2, 3
NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN, NFTA_SET_DATA_TYPE, NFTA_SET_DATA_LEN = 4, 5, 6, 7
NFT_SET_INTERVAL, NFT_SET_MAP, NFT_SET_TIMEOUT, NFT_SET_OBJECT = 0x4, 0x8, 0x10, 0x40
NFT_DATA_VERDICT = 0xFFFFFF00
TYPE_BITS = 6

# nft's datatype ids (include/datatype.h) for the field kinds the encoder knows.
DATATYPES = {7: "ipv4_addr", 12: "inet_proto", 13: "inet_service", 19: "mark", 41: "ifname"}


@dataclass(frozen=True)
class SetShape:
    name: str
    key: tuple[str, ...]          # datatype name per key field ("?<id>" if unknown)
    key_len: int
    data: tuple[str, ...] | None  # a map's data fields; None for a plain set
    data_len: int
    flags: int

    @property
    def interval(self) -> bool:
        return bool(self.flags & NFT_SET_INTERVAL)


def fields(type_id: int) -> tuple[str, ...]:
    """The datatype names of a (possibly concatenated) type id."""
    if type_id == NFT_DATA_VERDICT:
        return ("verdict",)
    out: list[str] = []
    while type_id:
        sub = type_id & ((1 << TYPE_BITS) - 1)
        out.append(DATATYPES.get(sub, f"?{sub}"))
        type_id >>= TYPE_BITS
    return tuple(reversed(out)) or ("?0",)


def request(family: str, table: str, seq: int = 1) -> bytes:
    """The GETSET dump of one table's sets."""
    body = _NFGEN.pack(FAMILIES[family], 0, 0) + attr(NFTA_SET_TABLE, cstring(table))
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def shape_of(body: bytes) -> SetShape | None:
    """One NEWSET message's attributes (past nfgenmsg) as a SetShape."""
    got = {kind & 0x3FFF: value for kind, value in attrs(body)}
    if NFTA_SET_NAME not in got or NFTA_SET_KEY_TYPE not in got:
        return None

    def u32(kind: int) -> int:
        value = got.get(kind)
        return int(struct.unpack("!I", value)[0]) if value is not None and len(value) == 4 else 0
    flags = u32(NFTA_SET_FLAGS)
    data = fields(u32(NFTA_SET_DATA_TYPE)) if flags & NFT_SET_MAP else None
    return SetShape(got[NFTA_SET_NAME].rstrip(b"\0").decode(), fields(u32(NFTA_SET_KEY_TYPE)),
                    u32(NFTA_SET_KEY_LEN), data, u32(NFTA_SET_DATA_LEN), flags)


def read_shapes(family: str, table: str) -> dict[str, SetShape]:
    """Every set of the table by name ({}: no such table)."""
    request(family, table)   # bad input refused before any I/O
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSET
    bodies = nlsock.dump(lambda seq: request(family, table, seq), kind, f"nft GETSET {family} {table}")
    shapes = [shape_of(body) for body in bodies]
    return {s.name: s for s in shapes if s is not None}

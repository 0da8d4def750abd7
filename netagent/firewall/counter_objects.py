"""The named counters of an nft table (the drop counters the metrics export),
from one NFT_MSG_GETOBJ dump of counter objects on the thread's kept netlink
socket.

Why not libnftables' `list counters`: it fills its cache with every set
element first, and under churn the ruleset generation moves during that
fetch, so it starts over; py-spy of a churning 2,000-sandbox agent found the
cleaner thread in it for 74% of 20 s (docs/history/performance-log.md, "Metrics
refresh"). Building and reading the messages is pure; `packets` does the I/O.
"""
from __future__ import annotations

import struct

from . import nlsock
from .generation import _HEADER, _NFGEN, NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST
from .nfnetlink import NLM_F_DUMP, attr, cstring, first
from .table_probe import FAMILIES

NFT_MSG_NEWOBJ, NFT_MSG_GETOBJ = 18, 19
NEWOBJ = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ
NFTA_OBJ_TABLE, NFTA_OBJ_NAME, NFTA_OBJ_TYPE, NFTA_OBJ_DATA = 1, 2, 3, 4
NFT_OBJECT_COUNTER = 1
NFTA_COUNTER_BYTES, NFTA_COUNTER_PACKETS = 1, 2


def request(family: str, table: str, seq: int = 1) -> bytes:
    """The GETOBJ dump of one table's counter objects (ValueError on bad input)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown nft family {family!r} (known: {', '.join(FAMILIES)})")
    body = (_NFGEN.pack(FAMILIES[family], 0, 0)
            + attr(NFTA_OBJ_TABLE, cstring(table))
            + attr(NFTA_OBJ_TYPE, struct.pack("!I", NFT_OBJECT_COUNTER)))
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETOBJ
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def counters_of(objects: list[bytes]) -> dict[str, int]:
    """name -> packets of each counter object, from the NEWOBJ messages' attributes."""
    out: dict[str, int] = {}
    for attrs in objects:
        name = first(attrs, NFTA_OBJ_NAME)
        data = first(attrs, NFTA_OBJ_DATA)
        packets = first(data, NFTA_COUNTER_PACKETS) if data is not None else None
        if name and packets is not None and len(packets) == 8:
            out[name.split(b"\0", 1)[0].decode()] = int(struct.unpack("!Q", packets)[0])
    return out


def packets(family: str, table: str) -> dict[str, int]:
    """Packets of every named counter of the table ({}: no table), in the
    calling thread's netns."""
    request(family, table)   # bad input refused before any I/O
    return counters_of(nlsock.dump(lambda seq: request(family, table, seq), NEWOBJ, "nft GETOBJ"))


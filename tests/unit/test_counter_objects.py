"""The counter-object dump's messages (netagent/firewall/counter_objects.py),
pure (tests/unit/test_set_dump.py reads dumps to their end);
tests/datapath/test_table_probe.py reads a real kernel's counters."""
from __future__ import annotations

import struct

import pytest

from netagent.firewall import counter_objects as co


def attr(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def message(kind: int, body: bytes, seq: int = 1) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 2, seq, 0) + body


NEWOBJ = (co.NFNL_SUBSYS_NFTABLES << 8) | co.NFT_MSG_NEWOBJ


def counter(name: str, packets: int) -> bytes:
    data = (attr(co.NFTA_COUNTER_BYTES, struct.pack("!Q", 10 * packets))
            + attr(co.NFTA_COUNTER_PACKETS, struct.pack("!Q", packets)))
    obj = (attr(co.NFTA_OBJ_TABLE, b"na\0") + attr(co.NFTA_OBJ_NAME, name.encode() + b"\0")
           + attr(co.NFTA_OBJ_TYPE, struct.pack("!I", 1)) + attr(co.NFTA_OBJ_DATA | 0x8000, data))
    return message(NEWOBJ, b"\1\0\0\0" + obj)


def test_the_request_dumps_one_tables_counters():
    msg = co.request("inet", "na", seq=4)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), (10 << 8) | 19, co.NLM_F_REQUEST | co.NLM_F_DUMP, 4)
    assert msg[20:] == attr(co.NFTA_OBJ_TABLE, b"na\0") + attr(co.NFTA_OBJ_TYPE, struct.pack("!I", 1))
    with pytest.raises(ValueError):
        co.request("inet6", "na")


def test_the_counters_are_read_from_the_dumped_objects():
    bodies = [counter("drop_a", 7)[20:], counter("drop_b", 0)[20:], b"\x06\x00\x02\x00q\0\0\0"]   # last: no data
    assert co.counters_of(bodies) == {"drop_a": 7, "drop_b": 0}
    assert co.counters_of([]) == {}

"""The netlink table probe's messages (netagent/firewall/table_probe.py), pure;
tests/datapath/test_table_probe.py asks a real kernel."""
from __future__ import annotations

import errno
import struct

import pytest

from netagent.firewall import table_probe as tp


def reply(kind: int, payload: bytes, seq: int = 1) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload


def error(code: int, seq: int = 1) -> bytes:
    return reply(tp.NLMSG_ERROR, struct.pack("=i", code) + b"\0" * 16, seq)


NEWTABLE = (tp.NFNL_SUBSYS_NFTABLES << 8) | tp.NFT_MSG_NEWTABLE


def test_the_request_asks_for_one_table_by_family_and_name():
    msg = tp.request("inet", "na", seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), (10 << 8) | 1, tp.NLM_F_REQUEST | tp.NLM_F_ACK, 7)
    assert msg[16:20] == bytes([1, 0, 0, 0])                        # NFPROTO_INET, v0
    assert msg[20:] == struct.pack("=HH", 7, tp.NFTA_TABLE_NAME) + b"na\0" + b"\0"   # padded to 4
    assert len(msg) % 4 == 0


@pytest.mark.parametrize("family,name", [("inet6", "na"), ("inet", ""), ("inet", "a\0b"), ("inet", "x" * 256)])
def test_bad_input_is_refused(family, name):
    with pytest.raises(ValueError):
        tp.request(family, name)


def test_the_answer_reads_found_missing_ack_and_errors():
    assert tp.answer(reply(NEWTABLE, b"\1\0\0\0") + error(0)) is True
    assert tp.answer(error(-errno.ENOENT)) is False
    assert tp.answer(error(0)) is None                               # an ack alone: read on
    assert tp.answer(error(-errno.ENOENT, seq=9)) is None            # not our request
    with pytest.raises(OSError) as exc:
        tp.answer(error(-errno.EPERM))
    assert exc.value.errno == errno.EPERM


def test_lookup_gives_the_tables_handle() -> None:
    name = b"na\0\0"
    attrs = struct.pack("=HH", 4 + len(name), tp.NFTA_TABLE_NAME) + name
    attrs += struct.pack("=HH", 12, tp.NFTA_TABLE_HANDLE) + struct.pack("!Q", 77)
    body = struct.pack("=BBH", 1, 0, 0) + attrs
    kind = (tp.NFNL_SUBSYS_NFTABLES << 8) | tp.NFT_MSG_NEWTABLE
    reply = struct.pack("=IHHII", 16 + len(body), kind, 0, 1, 0) + body
    assert tp.lookup(reply) == (True, 77)
    assert tp.answer(reply) is True

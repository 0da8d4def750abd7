"""The netlink element probe's messages (netagent/firewall/element_probe.py),
pure; tests/datapath/test_table_probe.py asks a real kernel."""
from __future__ import annotations

import errno
import struct

import pytest

from netagent.firewall import element_probe as ep


def reply(kind: int, payload: bytes, seq: int = 1) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload


def error(code: int, seq: int = 1) -> bytes:
    return reply(ep.NLMSG_ERROR, struct.pack("=i", code) + b"\0" * 16, seq)


NEWSETELEM = (ep.NFNL_SUBSYS_NFTABLES << 8) | ep.NFT_MSG_NEWSETELEM


def test_the_request_names_table_set_and_one_key():
    msg = ep.request("inet", "na", "egress_mode", bytes([10, 12, 0, 5]), seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), (10 << 8) | 13, ep.NLM_F_REQUEST | ep.NLM_F_ACK, 7)
    assert msg[16:20] == bytes([1, 0, 0, 0])                         # NFPROTO_INET, v0
    table = struct.pack("=HH", 7, ep.NFTA_SET_ELEM_LIST_TABLE) + b"na\0\0"
    set_ = struct.pack("=HH", 16, ep.NFTA_SET_ELEM_LIST_SET) + b"egress_mode\0"
    value = struct.pack("=HH", 8, ep.NFTA_DATA_VALUE) + bytes([10, 12, 0, 5])
    key = struct.pack("=HH", 12, ep.NFTA_SET_ELEM_KEY | ep.NLA_F_NESTED) + value
    item = struct.pack("=HH", 16, ep.NFTA_LIST_ELEM | ep.NLA_F_NESTED) + key
    elements = struct.pack("=HH", 20, ep.NFTA_SET_ELEM_LIST_ELEMENTS | ep.NLA_F_NESTED) + item
    assert msg[20:] == table + set_ + elements
    assert len(msg) % 4 == 0


@pytest.mark.parametrize("family,table,set_name,key", [
    ("inet6", "na", "s", b"\1\2\3\4"), ("inet", "", "s", b"\1\2\3\4"), ("inet", "na", "a\0b", b"\1\2\3\4"),
    ("inet", "na", "s", b""), ("inet", "na", "s", b"\0" * 65)])
def test_bad_input_is_refused(family, table, set_name, key):
    with pytest.raises(ValueError):
        ep.request(family, table, set_name, key)


def test_the_answer_reads_found_missing_ack_and_errors():
    assert ep.answer(reply(NEWSETELEM, b"\1\0\0\0") + error(0)) is True
    assert ep.answer(error(-errno.ENOENT)) is False
    assert ep.answer(error(0)) is False                              # an ack with no element
    assert ep.answer(error(-errno.ENOENT, seq=9)) is None            # not our request
    assert ep.answer(b"") is None
    with pytest.raises(OSError) as exc:
        ep.answer(error(-errno.EPERM))
    assert exc.value.errno == errno.EPERM


def test_only_plain_ipv4_keys_have_netlink_bytes():
    assert ep.ipv4_key("10.12.0.5") == bytes([10, 12, 0, 5])
    assert ep.ipv4_key("10.12.0.0/24") is None and ep.ipv4_key("fd00::1") is None


def test_the_counter_is_read_from_the_element_the_kernel_returned():
    # as a 6.x kernel answers for `10.12.0.5 counter packets 7 bytes 900`
    elem = (b"\x0c\x00\x01\x00\x08\x00\x01\x00\n\x0c\x00\x05,\x00\x07\x00\x0c\x00\x01\x00counter\x00"
            b"\x1c\x00\x02\x00\x0c\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03\x84\x0c\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x07")
    assert ep.counter_of(elem) == (7, 900)
    assert ep.counter_of(elem[:12]) is None                           # the key alone: no counter
    reply_ = reply(NEWSETELEM, b"\1\0\0\0" + struct.pack("=HH", 4 + 4 + len(elem), ep.NFTA_SET_ELEM_LIST_ELEMENTS)
                   + struct.pack("=HH", 4 + len(elem), ep.NFTA_LIST_ELEM) + elem)
    assert ep.element(reply_) == elem

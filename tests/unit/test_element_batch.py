"""The raw element batch's encoder and reader (firewall/element_batch.py) and
the set shapes it works from (firewall/set_schema.py), without root: keys and
data byte for byte as `nft --debug=netlink` / `--debug=mnl` (nft 1.0.6) showed
them for the same `add element` lines, messages read back by the decoders the
agent already has (element_probe), the batch's framing and its answers."""
from __future__ import annotations

import errno
import struct

import pytest

from netagent.firewall import element_batch as eb
from netagent.firewall import element_probe, set_schema
from netagent.firewall import elements as el
from netagent.firewall.nfnetlink import attr, attrs, first
from netagent.firewall.set_schema import NFT_SET_INTERVAL, NFT_SET_MAP, NFT_SET_TIMEOUT, SetShape

E = el.Element
CONCAT_INTERVAL = NFT_SET_INTERVAL | 0x80

SHAPES = {s.name: s for s in [
    SetShape("sbx_ifaces", ("ifname",), 16, None, 0, 0),
    SetShape("sbx_src", ("ifname", "ipv4_addr"), 20, None, 0, 0),
    SetShape("slot_mark_in", ("ipv4_addr",), 4, ("mark",), 4, NFT_SET_MAP),
    SetShape("live_marks", ("mark",), 4, None, 0, 0),
    SetShape("allow_net", ("ipv4_addr", "ipv4_addr"), 8, None, 0, CONCAT_INTERVAL),
    SetShape("allow_port", ("ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"), 16, None, 0, CONCAT_INTERVAL),
    SetShape("fqdn_ips", ("ipv4_addr", "ipv4_addr"), 8, None, 0, NFT_SET_TIMEOUT),
    SetShape("port_dnat", ("inet_proto", "inet_service"), 8, ("ipv4_addr", "inet_service"), 8, NFT_SET_MAP),
    SetShape("egress_snat", ("ipv4_addr",), 4, ("ipv4_addr",), 4, NFT_SET_MAP),
    SetShape("usage_host_sent", ("ipv4_addr",), 4, None, 0, 0),
    SetShape("always_deny", ("ipv4_addr",), 4, None, 0, NFT_SET_INTERVAL),
    SetShape("verdicts", ("ipv4_addr",), 4, ("verdict",), 16, NFT_SET_MAP),
]}

# `nft --debug=netlink` for these elements: key [- key end] [: data], in 32-bit
# words printed in host order (x86_64: little-endian).
CAPTURED = [
    (E("sbx_ifaces", "nah0"), "3068616e 00000000 00000000 00000000"),
    (E("sbx_src", ("nah0", "10.1.0.2")), "3068616e 00000000 00000000 00000000 0200010a"),
    (E("slot_mark_in", "10.1.0.2", 0x12345), "0200010a : 00012345"),
    (E("live_marks", 0x12345), "00012345"),
    (E("allow_net", ("10.1.0.2", "192.0.2.0/24")), "0200010a 000200c0 - 0200010a ff0200c0"),
    (E("allow_net", ("10.1.0.2", "198.51.100.7")), "0200010a 076433c6 - 0200010a 076433c6"),
    (E("allow_port", ("10.1.0.2", "192.0.2.0/24", "tcp", 443)),
     "0200010a 000200c0 00000006 0000bb01 - 0200010a ff0200c0 00000006 0000bb01"),
    (E("fqdn_ips", ("10.1.0.2", "192.0.2.9")), "0200010a 090200c0"),
    (E("port_dnat", ("tcp", 30001), ("10.1.0.2", 8080)), "00000006 00003175 : 0200010a 0000901f"),
    (E("egress_snat", "10.1.0.2", "203.0.113.5"), "0200010a : 057100cb"),
    (E("usage_host_sent", "10.1.0.2"), "0200010a"),
]


def words(text: str) -> bytes:
    return b"".join(struct.pack("=I", int(w, 16)) for w in text.split())


def value(elem: bytes, kind: int) -> bytes | None:
    nested = first(elem, kind)
    return None if nested is None else first(nested, 1)


@pytest.mark.parametrize(("element", "captured"), CAPTURED, ids=[e.set for e, _ in CAPTURED])
def test_keys_and_data_are_laid_out_as_nft_lays_them_out(element, captured):
    # the captures are of a little-endian host: elsewhere this fails, it does not skip
    assert struct.pack("=I", 1) == b"\1\0\0\0", "captured on a little-endian host"
    key_text, _, data_text = captured.partition(" : ")
    start_text, _, end_text = key_text.partition(" - ")
    elem = eb.element_attrs(SHAPES[element.set], eb.Change("add", element))
    assert value(elem, eb.NFTA_SET_ELEM_KEY) == words(start_text)
    assert value(elem, eb.NFTA_SET_ELEM_KEY_END) == (words(end_text) if end_text else None)
    assert value(elem, eb.NFTA_SET_ELEM_DATA) == (words(data_text) if data_text else None)


def test_a_timed_element_is_byte_for_byte_what_nft_sends():
    # `nft --debug=mnl`: add element inet na fqdn_ips { 10.1.0.3 . 192.0.2.9 timeout 30s }
    nft = bytes.fromhex("20000180" "0c000400" "0000000000007530" "10000180" "0c000100" "0a010003c0000209")
    change = eb.timed_changes("fqdn_ips", [(("10.1.0.3", "192.0.2.9"), 30)])[0]
    assert attr(1 | 0x8000, eb.element_attrs(SHAPES["fqdn_ips"], change)) == nft


def test_a_concatenated_interval_is_byte_for_byte_what_nft_sends():
    # `nft --debug=mnl`: add element inet na allow_net { 10.1.0.3 . 192.0.2.0/24 }
    nft = bytes.fromhex("24000180" "10000180" "0c000100" "0a010003c0000200" "1000" "0a80" "0c000100" "0a010003c00002ff")
    change = eb.Change("add", E("allow_net", ("10.1.0.3", "192.0.2.0/24")))
    assert attr(1 | 0x8000, eb.element_attrs(SHAPES["allow_net"], change)) == nft


def test_the_batch_reads_back_through_the_agents_decoders():
    ops = el.add([E("usage_host_sent", "10.1.0.2"), E("usage_host_sent", "10.1.0.3")]) + \
        el.delete([E("live_marks", 7)])
    batch = eb.encode("inet", "na", SHAPES, eb.changes(ops), 40)
    msgs = list(_messages(batch.data))
    kinds = [(kind & 0xFF, flags, seq) for kind, flags, seq, _ in msgs]
    new, delete, ack, create = 12, 14, 0x4, 0x400
    assert kinds == [(0x10, 1, 40), (new, 1 | create, 41), (new, 1 | create, 42), (delete, 1 | ack, 43), (0x11, 1, 44)]
    assert (msgs[0][0], msgs[-1][0]) == (0x10, 0x11)                # BATCH_BEGIN / END, not nf_tables messages
    assert msgs[0][3][2:4] == struct.pack("!H", 10)                   # res_id: the nf_tables subsystem
    assert (batch.first_seq, batch.last_seq) == (40, 43)
    # element_probe reads a NEWSETELEM the same way whether the kernel or we wrote it
    elem = element_probe.element(batch.data[_offset(batch.data, 1):], 41)
    assert isinstance(elem, bytes) and value(elem, eb.NFTA_SET_ELEM_KEY) == element_probe.ipv4_key("10.1.0.2")
    body = msgs[1][3][4:]
    assert first(body, 2) == b"usage_host_sent\0" and first(body, 1) == b"na\0"
    listed = [v for k, v in attrs(first(body, 3) or b"")]
    assert len(listed) == 2   # the run of adds (add-then-delete's add included) shares a message


def test_a_long_run_is_split_and_only_the_last_message_asks_for_an_ack():
    many = [E("live_marks", i) for i in range(3000)]
    batch = eb.encode("inet", "na", SHAPES, eb.changes(el.add(many)), 1)
    msgs = list(_messages(batch.data))[1:-1]
    assert len(msgs) > 1 and all(len(m[3]) < 0xFFFF for m in msgs)
    assert [bool(m[1] & eb.NLM_F_ACK) for m in msgs] == [False] * (len(msgs) - 1) + [True]
    assert sum(len(list(attrs(first(m[3][4:], 3) or b""))) for m in msgs) == 3000


def test_renumbering_moves_every_sequence_number():
    ops = el.add([E("live_marks", 1), E("usage_host_sent", "10.0.0.1")])
    batch = eb.encode("inet", "na", SHAPES, eb.changes(ops), 1)
    moved = eb.renumber(batch, 1000)
    assert [m[2] for m in _messages(moved.data)] == [1000, 1001, 1002, 1003]
    assert (moved.first_seq, moved.last_seq, sorted(moved.labels)) == (1000, 1002, [1000, 1001, 1002])
    assert moved.data != batch.data and len(moved.data) == len(batch.data)


@pytest.mark.parametrize(("element", "why"), [
    (E("always_deny", "192.0.2.0/24"), "interval set of one field"),
    (E("verdicts", "10.0.0.1", "jump x"), "verdict"),
    (E("usage_host_sent", "192.0.2.0/24"), "range in a set without intervals"),
    (E("sbx_ifaces", "an-interface-name-too-long"), "bad interface name"),
    (E("allow_port", ("10.0.0.1", "192.0.2.0/24", "sctp", 1)), "unknown protocol"),
    (E("live_marks", "not a mark"), "not a mark"),
    (E("egress_snat", "10.0.0.1"), "without data"),
    (E("nosuch", "10.0.0.1"), "no set nosuch"),
])
def test_what_is_not_encoded_says_so(element, why):
    with pytest.raises(eb.Unencodable, match=why):
        eb.encode("inet", "na", SHAPES, [eb.Change("add", element)], 1)


def _ack(seq: int, code: int) -> bytes:
    return struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", code) + struct.pack("=IHHII", 16, 0, 0, seq, 0)


def test_the_reader_waits_for_the_last_ack_and_names_each_refused_message():
    batch = eb.encode("inet", "na", SHAPES, eb.changes(el.add([E("live_marks", 1)]) + el.delete([E("live_marks", 2)])),
                      10)
    assert eb.reader(batch)(b"", 10) is None
    assert eb.reader(batch)(_ack(999, -errno.EEXIST) + _ack(12, 0), 10) is True   # another request's answer ignored
    with pytest.raises(eb.BatchError, match=r"nothing changed: add element inet na live_marks \(2\): File exists"):
        answer = eb.reader(batch)
        assert answer(_ack(11, -errno.EEXIST), 10) is None     # errors come first; the last ack ends the answer
        answer(_ack(12, 0), 10)
    with pytest.raises(eb.BatchError, match=r"delete element inet na live_marks \(1\): No such file"):
        eb.reader(batch)(_ack(12, -errno.ENOENT), 10)
    with pytest.raises(eb.BatchError, match="the batch: Invalid argument"):   # the batch refused whole
        eb.reader(batch)(_ack(10, -errno.EINVAL), 10)


def test_set_shapes_decode_nfts_type_ids():
    assert set_schema.fields(7) == ("ipv4_addr",)
    assert set_schema.fields((7 << 6) | 7) == ("ipv4_addr", "ipv4_addr")
    assert set_schema.fields((((7 << 6) | 7) << 12) | (12 << 6) | 13) == \
        ("ipv4_addr", "ipv4_addr", "inet_proto", "inet_service")
    assert set_schema.fields((41 << 6) | 7) == ("ifname", "ipv4_addr")
    assert set_schema.fields(set_schema.NFT_DATA_VERDICT) == ("verdict",)
    assert set_schema.fields(63) == ("?63",)
    u32 = struct.Struct("!I").pack
    body = (attr(1, b"na\0") + attr(2, b"port_dnat\0") + attr(3, u32(NFT_SET_MAP)) + attr(4, u32((12 << 6) | 13))
            + attr(5, u32(8)) + attr(6, u32((7 << 6) | 13)) + attr(7, u32(8)))
    assert set_schema.shape_of(body) == SHAPES["port_dnat"]
    assert set_schema.shape_of(attr(1, b"na\0")) is None
    req = set_schema.request("inet", "na", 5)
    assert struct.unpack_from("=IHHI", req)[1:] == ((10 << 8) | 10, 1 | 0x300, 5)
    assert req[16] == 1   # NFPROTO_INET


def _messages(data: bytes):  # type: ignore[no-untyped-def]
    pos = 0
    while pos < len(data):
        length, kind, flags, seq = struct.unpack_from("=IHHI", data, pos)
        yield kind, flags, seq, data[pos + 16:pos + length]
        pos += (length + 3) & ~3


def _offset(data: bytes, index: int) -> int:
    pos = 0
    for _ in range(index):
        pos += (struct.unpack_from("=I", data, pos)[0] + 3) & ~3
    return pos

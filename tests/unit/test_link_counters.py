"""The raw link-dump parser (netagent/datapath/link_counters.py), pure;
tests/unit/test_metrics.py reads real veth counters through it."""
from __future__ import annotations

import errno
import struct

import pytest

from netagent.datapath import link_counters as lc


def attr(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def message(kind: int, body: bytes, seq: int = 1) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 2, seq, 0) + body


def link(name: str, rx: int, tx: int, stats64: bool = True) -> bytes:
    ifinfo = struct.pack("=BxHiII", 0, 1, 7, 0, 0)
    stats = (attr(lc.IFLA_STATS64, struct.pack("=QQQQ", 1, 2, rx, tx) + b"\0" * 160) if stats64
             else attr(lc.IFLA_STATS, struct.pack("=IIII", 1, 2, rx, tx) + b"\0" * 80))
    mtu = attr(4, struct.pack("=I", 1500))
    return message(lc.RTM_NEWLINK, ifinfo + mtu + attr(lc.IFLA_IFNAME, name.encode() + b"\0") + stats)


def test_a_dump_gives_each_links_byte_counters_until_done():
    out: dict[str, tuple[int, int]] = {}
    assert lc.parse(link("nav0", 5_000_000_000, 7) + link("lo", 3, 4, stats64=False), out) is False
    assert out == {"nav0": (5_000_000_000, 7), "lo": (3, 4)}
    assert lc.parse(message(lc.NLMSG_DONE, struct.pack("=i", 0)), out) is True
    assert lc.parse(message(lc.NLMSG_DONE, b"\0" * 4, seq=9), out) is False   # not our dump


def test_the_request_is_a_link_dump():
    msg = lc.request(seq=5)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), lc.RTM_GETLINK, lc.NLM_F_REQUEST | lc.NLM_F_DUMP, 5)


def test_an_error_reply_raises():
    with pytest.raises(OSError) as exc:
        lc.parse(message(lc.NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + b"\0" * 16), {})
    assert exc.value.errno == errno.EPERM


def stats(index: int, rx: int, tx: int, seq: int = 1) -> bytes:
    head = struct.pack("=BxHII", 0, 0, index, 1)
    return message(lc.RTM_NEWSTATS, head + attr(lc.IFLA_STATS_LINK_64, struct.pack("=QQQQ", 1, 2, rx, tx)
                                                 + b"\0" * 160), seq)


def test_a_stats_dump_gives_each_links_byte_counters_by_index_until_done():
    out: dict[int, tuple[int, int]] = {}
    assert lc.parse_stats(stats(7, 5_000_000_000, 9) + stats(1, 3, 4) + stats(2, 0, 0, seq=9), out) is False
    assert out == {7: (5_000_000_000, 9), 1: (3, 4)}
    assert lc.parse_stats(message(lc.NLMSG_DONE, struct.pack("=i", 0)), out) is True


def test_the_stats_request_asks_for_the_64_bit_link_stats_only():
    msg = lc.stats_request(seq=5)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), lc.RTM_GETSTATS, lc.NLM_F_REQUEST | lc.NLM_F_DUMP, 5)
    assert struct.unpack_from("=BxHII", msg, 16) == (0, 0, 0, 1 << (lc.IFLA_STATS_LINK_64 - 1))


def test_a_link_dump_also_names_each_index():
    names: dict[int, str] = {}
    lc.parse(link("nav0", 1, 2), {}, names=names)
    assert names == {7: "nav0"}

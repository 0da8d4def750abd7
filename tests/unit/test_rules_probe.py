"""The table-rules fingerprint's messages (netagent/firewall/rules_probe.py),
pure; tests/datapath/test_rules_probe.py fingerprints a real kernel's table."""
from __future__ import annotations

import errno
import struct
from collections import Counter

import pytest

from netagent.firewall import nlsock
from netagent.firewall import rules_probe as rp
from netagent.firewall.nfnetlink import (
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    Dump,
    attr,
    dump_reader,
)

NESTED = 0x8000
TABLE, CHAINS, SETS, RULES, OBJECTS, FLOWTABLES = rp.PARTS


def message(kind: int, body: bytes, seq: int = 1, flags: int = 2) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def reply(part: rp.Part, attributes: bytes, seq: int = 1, flags: int = 2) -> bytes:
    return message((10 << 8) | (part.get - 1), b"\1\0\0\0" + attributes, seq, flags)


def done(seq: int = 1, flags: int = 2) -> bytes:
    return message(NLMSG_DONE, b"\0" * 4, seq, flags)


def enoent(seq: int = 1) -> bytes:
    return message(NLMSG_ERROR, struct.pack("=i", -errno.ENOENT) + b"\0" * 16, seq)


def ack(seq: int = 1) -> bytes:
    return message(NLMSG_ERROR, struct.pack("=i", 0) + b"\0" * 16, seq)


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!I", value))


def u64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("!Q", value))


def expr(name: str, data: bytes) -> bytes:
    """One expression: its name and data (a list holds each in an NFTA_LIST_ELEM)."""
    return attr(rp.NFTA_EXPR_NAME, name.encode() + b"\0") + attr(rp.NFTA_EXPR_DATA | NESTED, data)


def counter(packets: int) -> bytes:
    return expr("counter", u64(1, packets * 100) + u64(2, packets))


def rule(*exprs: bytes, table: str = "na", handle: int = 5) -> bytes:
    return (attr(1, table.encode() + b"\0") + attr(2, b"forward\0") + u64(3, handle)
            + attr(rp.NFTA_RULE_EXPRESSIONS | NESTED, b"".join(attr(1 | NESTED, e) for e in exprs)))


CMP = expr("cmp", u32(1, 1) + u32(2, 0) + attr(3 | NESTED, attr(1, b"\x06\0\0\0")))


def read(part: rp.Part, *datagrams: bytes) -> list[Dump | None]:
    """What nlsock.dump's reader makes of these datagrams, one by one."""
    answer = dump_reader((10 << 8) | (part.get - 1), "test")
    return [answer(d, 1) for d in datagrams]


def test_the_table_is_asked_for_alone_and_the_rest_dumped_filtered_to_it():
    msg = rp.request(TABLE, "inet", "na", seq=4)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), (10 << 8) | 1, 1 | NLM_F_ACK, 4)
    assert msg[16:] == b"\1\0\0\0" + attr(1, b"na\0")
    for part, get in ((CHAINS, 4), (SETS, 10), (RULES, 7), (OBJECTS, 19), (FLOWTABLES, 23)):
        msg = rp.request(part, "inet", "na")
        assert struct.unpack_from("=HH", msg, 4) == ((10 << 8) | get, 1 | NLM_F_DUMP)
        assert msg[20:] == attr(1, b"na\0")
    for family, table in (("inet6", "na"), ("inet", ""), ("inet", "a\0b")):
        with pytest.raises(ValueError):
            rp.request(RULES, family, table)


def test_a_dump_is_read_to_its_end_and_only_the_tables_objects_kept():
    chain = attr(1, b"na\0") + u64(2, 7) + attr(3, b"forward\0") + u32(rp.NFTA_CHAIN_USE, 3)
    other = attr(1, b"nb\0") + u64(2, 9) + attr(3, b"input\0")
    ends = read(CHAINS, reply(CHAINS, chain) + reply(CHAINS, other), reply(CHAINS, chain, seq=7) + done())
    assert ends == [None, (True, [chain, other])]
    assert rp.of_table("na", [chain, other]) == [chain]
    assert rp.canonical(CHAINS, chain) == attr(1, b"na\0") + u64(2, 7) + attr(3, b"forward\0")   # no use count


def test_the_table_ends_at_its_ack_and_enoent_reads_empty():
    table = attr(1, b"na\0") + u64(4, 12) + u32(rp.NFTA_TABLE_USE, 40)
    assert read(TABLE, reply(TABLE, table), ack()) == [None, (True, [table])]
    assert read(TABLE, enoent()) == [(True, [])]
    assert read(SETS, enoent()) == [(True, [])]
    with pytest.raises(OSError):
        read(RULES, message(NLMSG_ERROR, struct.pack("=i", -errno.EPERM) + b"\0" * 16))


def test_an_interrupted_dump_is_read_to_its_end_then_asks_for_a_restart():
    # what it read is kept (a usage reading may take a cut dump); complete=False is what restarts it
    for answers in (read(RULES, reply(RULES, rule(CMP), flags=2 | NLM_F_DUMP_INTR), done()),
                    read(RULES, reply(RULES, rule(CMP)), done(flags=2 | NLM_F_DUMP_INTR))):
        assert answers[0] is None and answers[1][0] is False and len(answers[1][1]) == 1


def test_counters_and_element_counts_are_left_out_but_not_what_defines_a_rule():
    canonical = rp.canonical

    assert canonical(RULES, rule(CMP, counter(0))) == canonical(RULES, rule(CMP, counter(9)))
    quota = expr("quota", u64(1, 1000) + u64(2, 10) + u32(3, 0))
    assert canonical(RULES, rule(quota)) == canonical(RULES, rule(expr("quota", u64(1, 1000) + u64(2, 999))))
    assert canonical(RULES, rule(expr("last", u64(1, 5)))) == canonical(RULES, rule(expr("last", u64(1, 80))))
    def dynset(template: bytes) -> bytes:
        return expr("dynset", attr(1, b"conn_count\0") + attr(rp.NFTA_DYNSET_EXPR | NESTED, template))
    assert canonical(RULES, rule(dynset(counter(3)))) == canonical(RULES, rule(dynset(counter(0))))
    assert canonical(RULES, rule(CMP, counter(0))) != canonical(RULES, rule(CMP, CMP, counter(0)))
    assert canonical(RULES, rule(CMP, counter(0))) != canonical(RULES, rule(CMP, counter(0), handle=6))
    limit = expr("limit", u64(1, 5) + u64(2, 1))   # config, not state: kept
    assert canonical(RULES, rule(limit)) != canonical(RULES, rule(expr("limit", u64(1, 6) + u64(2, 1))))

    base = attr(1, b"na\0") + attr(3, b"forward\0")
    stats = attr(rp.NFTA_CHAIN_COUNTERS | NESTED, u64(1, 100) + u64(2, 1))
    assert (canonical(CHAINS, base + u32(rp.NFTA_CHAIN_USE, 1) + stats)
            == canonical(CHAINS, base + u32(rp.NFTA_CHAIN_USE, 7)))
    assert canonical(CHAINS, base + u32(5, 1)) != canonical(CHAINS, base + u32(5, 0))   # the policy
    backend = attr(rp.NFTA_SET_TYPE, b"0xffffffff82508740\0")
    s = attr(1, b"na\0") + attr(2, b"usage\0") + attr(rp.NFTA_SET_EXPR | NESTED, counter(0))
    assert canonical(SETS, s + u32(rp.NFTA_SET_COUNT, 2000) + backend) == canonical(SETS, s + u32(rp.NFTA_SET_COUNT, 1))
    obj = attr(1, b"na\0") + attr(2, b"drop_x\0") + u32(3, 1)
    assert canonical(OBJECTS, obj + attr(4 | NESTED, u64(2, 5)) + u32(5, 1)) == canonical(OBJECTS, obj)


class FakeKernel:
    """nlsock.ask over canned answers: per request type, the kernel's replies
    in turn (the last one repeats)."""

    def __init__(self, answers: dict[int, list[bytes]]):
        self.answers, self.asked = answers, Counter[int]()

    def ask(self, request, answer):  # type: ignore[no-untyped-def]
        get = struct.unpack_from("=H", request(1), 4)[0] & 0xFF
        turns = self.answers[get]
        self.asked[get] += 1
        found = answer(turns[min(self.asked[get], len(turns)) - 1], 1)
        assert found is not None, "a canned reply that does not end"
        return found


def kernel(*rules: bytes) -> FakeKernel:
    table = reply(TABLE, attr(1, b"na\0") + u64(4, 12)) + ack()
    return FakeKernel({1: [table], 4: [done()], 10: [done()], 19: [done()], 23: [done()], 7: list(rules)})


CLEAN = reply(RULES, rule(CMP, counter(1))) + done()
INTERRUPTED = reply(RULES, rule(CMP, counter(1)), flags=2 | NLM_F_DUMP_INTR) + done()


def test_an_interrupted_dump_is_read_again_up_to_a_bound(monkeypatch):
    clean = kernel(CLEAN)
    monkeypatch.setattr(nlsock, "ask", clean.ask)
    expected = rp.fingerprint("inet", "na")
    assert expected is not None and len(expected) == 16 and sum(clean.asked.values()) == len(rp.PARTS)

    twice = kernel(INTERRUPTED, INTERRUPTED, CLEAN)
    monkeypatch.setattr(nlsock, "ask", twice.ask)
    assert rp.fingerprint("inet", "na") == expected
    assert twice.asked[rp.NFT_MSG_GETRULE] == 3 and twice.asked[rp.NFT_MSG_GETTABLE] == 1   # only that dump again

    always = kernel(INTERRUPTED)
    monkeypatch.setattr(nlsock, "ask", always.ask)
    with pytest.raises(OSError):
        rp.fingerprint("inet", "na")
    assert always.asked[rp.NFT_MSG_GETRULE] == rp.TRIES


def test_fingerprint_is_none_without_the_table(monkeypatch):
    monkeypatch.setattr(nlsock, "ask", FakeKernel({1: [enoent()]}).ask)
    assert rp.fingerprint("inet", "na") is None
    whole = kernel(CLEAN)
    monkeypatch.setattr(nlsock, "ask", whole.ask)
    expected = rp.fingerprint("inet", "na")
    vanished = kernel(CLEAN)
    vanished.answers[7] = [enoent()]   # gone between the table and its rules: not the table we had
    monkeypatch.setattr(nlsock, "ask", vanished.ask)
    assert rp.fingerprint("inet", "na") not in (None, expected)

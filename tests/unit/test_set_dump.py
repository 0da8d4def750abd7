"""The set-element dump (netagent/firewall/set_dump.py) and the dump reader it
shares with counter_objects (nfnetlink.dump_reader, nlsock.dump), pure: replies
built by hand in the layout a 6.x kernel sends; tests/datapath/test_set_dump.py
reads a real kernel's sets."""
from __future__ import annotations

import errno
import socket
import struct

import pytest

from netagent.firewall import element_probe as ep
from netagent.firewall import nlsock
from netagent.firewall import set_dump as sd
from netagent.firewall.nfnetlink import NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, attr, dump_reader

NESTED = 0x8000


def message(kind: int, body: bytes, seq: int = 1, flags: int = 2) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def done(code: int = 0, seq: int = 1) -> bytes:
    return message(NLMSG_DONE, struct.pack("=i", code), seq)


def error(code: int, seq: int = 1) -> bytes:
    return message(NLMSG_ERROR, struct.pack("=i", code) + b"\0" * 16, seq)


def element(ip: str, packets: int, nbytes: int, extra: bytes = b"", nested: int = 0) -> bytes:
    """An NFTA_LIST_ELEM as the kernel sends it for a `type ipv4_addr; counter;` set."""
    counter = attr(ep.NFTA_COUNTER_BYTES, struct.pack("!Q", nbytes)) + attr(ep.NFTA_COUNTER_PACKETS,
                                                                             struct.pack("!Q", packets))
    expr = attr(ep.NFTA_EXPR_NAME, b"counter\0") + attr(ep.NFTA_EXPR_DATA | nested, counter)
    key = attr(ep.NFTA_SET_ELEM_KEY | nested, attr(ep.NFTA_DATA_VALUE, socket.inet_aton(ip)))
    return attr(ep.NFTA_LIST_ELEM | nested, key + attr(ep.NFTA_SET_ELEM_EXPR | nested, expr) + extra)


def elements_message(*elems: bytes, seq: int = 1, generation: int = 7, flags: int = 2) -> bytes:
    body = (struct.pack("=BBH", 1, 0, socket.htons(generation)) + attr(ep.NFTA_SET_ELEM_LIST_TABLE, b"na\0")
            + attr(ep.NFTA_SET_ELEM_LIST_SET, b"usage_host_sent\0")
            + attr(ep.NFTA_SET_ELEM_LIST_ELEMENTS, b"".join(elems)))
    return message(sd.NEWSETELEM, body, seq, flags)


def bodies(*messages: bytes) -> list[bytes]:
    return [m[20:] for m in messages]


def test_the_request_dumps_one_set_of_one_table():
    msg = sd.request("inet", "na", "usage_host_sent", seq=9)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), (10 << 8) | 13, 0x1 | 0x300, 9)   # REQUEST | DUMP, no ACK
    assert msg[16:20] == bytes([1, 0, 0, 0])                                         # NFPROTO_INET, v0
    assert msg[20:] == attr(ep.NFTA_SET_ELEM_LIST_TABLE, b"na\0") + attr(ep.NFTA_SET_ELEM_LIST_SET,
                                                                          b"usage_host_sent\0")
    for bad in (("inet6", "na", "s"), ("inet", "", "s"), ("inet", "na", "a\0b")):
        with pytest.raises(ValueError):
            sd.request(*bad)


def test_the_kernels_layout_takes_the_fast_path(set_dump_slow_reads):
    elem = element("10.12.0.5", 7, 900)
    assert len(elem) == 60
    assert elem == bytes.fromhex("3c0001000c00010008000100" "0a0c0005" "2c0007000c000100") + b"counter\0" + \
        bytes.fromhex("1c0002000c000100" "0000000000000384" "0c000200" "0000000000000007")   # as hexdumped from 6.18
    got = sd.element_counters(bodies(elements_message(elem, element("10.12.0.7", 0, 0),
                                                      element("10.12.1.1", 2**40, 2**50, nested=NESTED))))
    assert got == {"10.12.0.5": (7, 900), "10.12.0.7": (0, 0), "10.12.1.1": (2**40, 2**50)}
    assert set_dump_slow_reads == {"messages walked": 0, "generic walker": 0}


def test_an_element_of_another_layout_goes_through_the_generic_walker(set_dump_slow_reads):
    flags = attr(3, struct.pack("!I", 0))                     # e.g. NFTA_SET_ELEM_FLAGS after the expression
    pad = attr(3, b"")                                        # NFTA_COUNTER_PAD, as on strict-alignment arches
    padded = attr(ep.NFTA_LIST_ELEM, attr(ep.NFTA_SET_ELEM_KEY, attr(ep.NFTA_DATA_VALUE, socket.inet_aton("10.12.0.9")))
                  + attr(ep.NFTA_SET_ELEM_EXPR, attr(ep.NFTA_EXPR_NAME, b"counter\0") + attr(
                      ep.NFTA_EXPR_DATA, pad + attr(ep.NFTA_COUNTER_BYTES, struct.pack("!Q", 5))
                      + pad + attr(ep.NFTA_COUNTER_PACKETS, struct.pack("!Q", 1)))))
    no_counter = attr(ep.NFTA_LIST_ELEM, attr(ep.NFTA_SET_ELEM_KEY, attr(ep.NFTA_DATA_VALUE,
                                                                         socket.inet_aton("10.12.0.3"))))
    got = sd.element_counters(bodies(
        elements_message(element("10.12.0.5", 7, 900), element("10.12.0.6", 1, 60, extra=flags), padded, no_counter),
        elements_message(element("10.12.0.8", 3, 300))))
    assert got == {"10.12.0.5": (7, 900), "10.12.0.6": (1, 60), "10.12.0.9": (1, 5), "10.12.0.8": (3, 300)}
    # the odd ones only: their neighbours stay on the fast path, the second message whole
    assert set_dump_slow_reads == {"messages walked": 1, "generic walker": 3}


def test_an_empty_set_and_an_empty_last_message_read_as_nothing():
    assert sd.element_counters(bodies(elements_message())) == {}
    assert sd.element_counters([]) == {}


def test_a_dump_is_read_to_done_across_datagrams():
    read = dump_reader(sd.NEWSETELEM, "nft GETSETELEM")
    first, second = elements_message(element("10.12.0.1", 1, 10)), elements_message(element("10.12.0.2", 2, 20))
    assert read(first, 1) is None
    assert read(elements_message(element("10.9.9.9", 9, 9), seq=4), 1) is None   # another request's: not ours
    complete, got = read(second + done(), 1)
    assert complete is True
    assert sd.element_counters(got) == {"10.12.0.1": (1, 10), "10.12.0.2": (2, 20)}


def test_a_dump_interrupted_by_a_commit_is_reported_at_its_end():
    flagged = dump_reader(sd.NEWSETELEM, "nft GETSETELEM")
    assert flagged(elements_message(element("10.12.0.1", 1, 10), flags=2 | NLM_F_DUMP_INTR), 1) is None
    assert flagged(done(), 1) == (False, bodies(elements_message(element("10.12.0.1", 1, 10))))   # kept, flagged
    moved = dump_reader(sd.NEWSETELEM, "nft GETSETELEM")     # nf_tables' generation changed midway, unflagged
    assert moved(elements_message(element("10.12.0.1", 1, 10), generation=7), 1) is None
    assert moved(elements_message(element("10.12.0.2", 1, 10), generation=8) + done(), 1) == (
        False, bodies(elements_message(element("10.12.0.1", 1, 10)), elements_message(element("10.12.0.2", 1, 10))))
    same = dump_reader(sd.NEWSETELEM, "nft GETSETELEM")
    assert same(elements_message(generation=8) + elements_message(generation=8) + done(), 1)[0] is True


def test_missing_set_or_table_is_an_empty_dump_and_other_errors_raise():
    assert dump_reader(sd.NEWSETELEM, "x")(error(-errno.ENOENT), 1) == (True, [])
    # the set went away midway: the dump callback's error comes in NLMSG_DONE
    assert dump_reader(sd.NEWSETELEM, "x")(elements_message(element("10.12.0.1", 1, 1)) + done(-errno.ENOENT),
                                           1) == (True, [])
    with pytest.raises(OSError) as exc:
        dump_reader(sd.NEWSETELEM, "x")(error(-errno.EPERM), 1)
    assert exc.value.errno == errno.EPERM
    with pytest.raises(OSError):
        dump_reader(sd.NEWSETELEM, "x")(done(-errno.ENOMEM), 1)


def test_an_interrupted_dump_is_started_over_then_taken_as_cut(monkeypatch):
    """Commits cut usage dumps 32 times in a row during a 10,000-sandbox fill,
    and the reading gave up: after USAGE_DUMP_TRIES a cut dump's elements are
    taken as they are, marked as cut. Other dumps (nlsock.dump) still give up."""
    replies: list[bytes] = []
    asked: list[int] = []

    def ask(request, answer):  # type: ignore[no-untyped-def]
        asked.append(1)
        return answer(replies.pop(0), 1)
    monkeypatch.setattr(nlsock, "ask", ask)
    interrupted = elements_message(element("10.12.0.1", 1, 1), flags=2 | NLM_F_DUMP_INTR) + done()
    whole = elements_message(element("10.12.0.1", 2, 2)) + done()
    replies[:] = [interrupted, interrupted, whole]
    got = sd.counters("inet", "na", ["usage_host_sent"])
    assert got == {"usage_host_sent": {"10.12.0.1": (2, 2)}} and len(asked) == 3
    assert not isinstance(got["usage_host_sent"], sd.CutDump)
    asked.clear()
    replies[:] = [interrupted] * sd.USAGE_DUMP_TRIES
    got = sd.counters("inet", "na", ["usage_host_sent"])
    assert got == {"usage_host_sent": {"10.12.0.1": (1, 1)}} and len(asked) == sd.USAGE_DUMP_TRIES
    assert isinstance(got["usage_host_sent"], sd.CutDump)
    replies[:] = [interrupted] * nlsock.DUMP_TRIES
    with pytest.raises(OSError) as exc:
        nlsock.dump(lambda seq: sd.request("inet", "na", "usage_host_sent", seq), sd.NEWSETELEM, "x")
    assert exc.value.errno == errno.EAGAIN
    replies[:] = [error(-errno.ENOENT), whole]
    assert sd.counters("inet", "na", ["gone", "usage_host_sent"]) == {"gone": {},
                                                                       "usage_host_sent": {"10.12.0.1": (2, 2)}}


def test_the_driver_turns_a_failed_dump_into_unavailable(monkeypatch):
    """UsageMeter.run survives NetagentError only: an OSError would end it."""
    from netagent.errors import Unavailable
    from netagent.firewall import driver

    def given_up(*_):  # type: ignore[no-untyped-def]
        raise OSError(errno.EAGAIN, "interrupted")
    monkeypatch.setattr(driver, "table_handle", lambda family, table: 5)
    monkeypatch.setattr(sd, "counters", given_up)
    with pytest.raises(Unavailable):
        driver.HostTable("na", nft=object()).usage()  # type: ignore[arg-type]
    monkeypatch.setattr(driver.element_probe, "counters", given_up)   # closing released sandboxes' usage
    with pytest.raises(Unavailable):
        driver.HostTable("na", nft=object()).usage_of(["10.12.0.1"])  # type: ignore[arg-type]
    monkeypatch.setattr(driver, "table_handle", given_up)
    with pytest.raises(Unavailable):
        driver.HostTable("na", nft=object()).usage()  # type: ignore[arg-type]


def test_a_message_read_last_time_is_not_parsed_again(monkeypatch):
    """An idle host's counters do not move: a reading takes each message that is
    byte for byte the last reading's from there, and parses only the others."""
    parsed: list[bytes] = []
    real = sd._message_counters
    monkeypatch.setattr(sd, "_message_counters", lambda body: (parsed.append(body), real(body))[1])
    quiet, busy = elements_message(element("10.12.0.1", 1, 10)), elements_message(element("10.12.0.2", 2, 20))
    seen: dict = {}
    assert sd.element_counters(bodies(quiet, busy), {}, seen) == {"10.12.0.1": (1, 10), "10.12.0.2": (2, 20)}
    assert len(parsed) == 2
    moved = elements_message(element("10.12.0.2", 3, 90))
    again: dict = {}
    assert sd.element_counters(bodies(quiet, moved), seen, again) == {"10.12.0.1": (1, 10), "10.12.0.2": (3, 90)}
    assert parsed[2:] == bodies(moved) and list(again) == bodies(quiet, moved)   # the next reading's memo


def test_a_set_that_did_not_move_reads_as_the_same_dict(monkeypatch):
    """The meter compares a reading with its last one: for a set whose messages
    are all the same as last time, an identity check."""
    replies: list[bytes] = []
    monkeypatch.setattr(nlsock, "ask", lambda request, answer: answer(replies.pop(0), 1))
    quiet = elements_message(element("10.12.0.1", 1, 10)) + elements_message(element("10.12.0.2", 2, 20)) + done()
    replies[:] = [quiet, quiet]
    first = sd.counters("inet", "nq", ["usage_host_sent"])["usage_host_sent"]
    assert sd.counters("inet", "nq", ["usage_host_sent"])["usage_host_sent"] is first
    replies[:] = [elements_message(element("10.12.0.1", 1, 10)) + elements_message(element("10.12.0.2", 5, 90))
                  + done()]
    moved = sd.counters("inet", "nq", ["usage_host_sent"])["usage_host_sent"]
    assert moved == {"10.12.0.1": (1, 10), "10.12.0.2": (5, 90)} and first == {"10.12.0.1": (1, 10),
                                                                              "10.12.0.2": (2, 20)}

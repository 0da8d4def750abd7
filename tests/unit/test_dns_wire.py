"""The DNS wire fast path agrees with dnspython, and declines what it cannot read."""
from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset

from netagent.dns.wire import REFUSED, SERVFAIL, a_records, error_response, parse_query


def query(name: str, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype).to_wire()


def test_parse_query_reads_id_and_lowercased_name():
    wire = query("WWW.Allowed.Test")
    q = parse_query(wire)
    assert q is not None and q.qid == dns.message.from_wire(wire).id
    assert q.name == "www.allowed.test." and q.end == len(wire)
    edns = dns.message.make_query("a.test", "A", use_edns=0).to_wire()
    assert parse_query(edns).end == len(edns) - 11   # the OPT record follows the question


def test_parse_query_declines_what_it_cannot_read_safely():
    assert parse_query(b"\x00" * 5) is None
    response = dns.message.make_response(dns.message.make_query("a.test", "A")).to_wire()
    assert parse_query(response) is None                             # QR set
    odd = dns.message.from_wire(query("x.test"))
    odd.question[0].name = dns.name.Name([b"evil.allowed", b"test", b""])   # a dot inside a label
    assert parse_query(odd.to_wire()) is None
    assert parse_query(query("x.test")[:-13]) is None                # truncated


def test_error_responses_parse_as_dnspython_expects():
    wire = query("denied.test")
    q = parse_query(wire)
    for rcode in (REFUSED, SERVFAIL):
        msg = dns.message.from_wire(error_response(wire, q, rcode))
        assert msg.id == q.qid and msg.rcode() == rcode and msg.flags & dns.flags.QR
        assert str(msg.question[0].name) == "denied.test." and not msg.answer


def test_a_records_follow_cname_chains_and_compression_like_dnspython():
    req = dns.message.make_query("www.alias.test", "A")
    resp = dns.message.make_response(req)
    resp.answer.append(dns.rrset.from_text("www.alias.test.", 300, "IN", "CNAME", "web.allowed.test."))
    resp.answer.append(dns.rrset.from_text("web.allowed.test.", 30, "IN", "A", "203.0.113.10", "203.0.113.11"))
    resp.answer.append(dns.rrset.from_text("web.allowed.test.", 30, "IN", "AAAA", "2001:db8::1"))
    wire = resp.to_wire()   # dnspython compresses names
    assert sorted(a_records(wire)) == [("203.0.113.10", 30), ("203.0.113.11", 30)]
    assert a_records(wire[:-5]) is None
    empty = dns.message.make_response(req)
    empty.set_rcode(dns.rcode.NXDOMAIN)
    assert a_records(empty.to_wire()) == []

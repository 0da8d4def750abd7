"""The DNS wire fast path agrees with dnspython, and declines what it cannot read."""
from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from netagent.dns.wire import (
    NXDOMAIN,
    REFUSED,
    SERVFAIL,
    TYPE_AAAA,
    a_records,
    aged,
    error_response,
    min_ttl,
    parse_query,
    rcode,
    truncated,
)


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
    for code in (REFUSED, SERVFAIL):
        msg = dns.message.from_wire(error_response(wire, q, code))
        assert msg.id == q.qid and msg.rcode() == code and msg.flags & dns.flags.QR
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


def test_parse_query_reads_the_type():
    assert parse_query(query("a.test", "AAAA")).qtype == TYPE_AAAA
    assert parse_query(query("a.test", "TXT")).qtype == dns.rdatatype.TXT


def _answer_with_soa_and_edns() -> bytes:
    req = dns.message.make_query("www.alias.test", "A", use_edns=0)
    resp = dns.message.make_response(req)
    resp.answer.append(dns.rrset.from_text("www.alias.test.", 300, "IN", "CNAME", "web.allowed.test."))
    resp.answer.append(dns.rrset.from_text("web.allowed.test.", 30, "IN", "A", "203.0.113.10"))
    resp.authority.append(dns.rrset.from_text("allowed.test.", 120, "IN", "SOA", "ns.test. h.test. 1 2 3 4 60"))
    return resp.to_wire()


def test_min_ttl_and_aging_read_every_record_but_the_opt():
    wire = _answer_with_soa_and_edns()
    assert min_ttl(wire) == 30
    older = dns.message.from_wire(aged(wire, 25))
    assert [rrset.ttl for rrset in older.answer] == [275, 5] and older.authority[0].ttl == 95
    assert older.edns == 0 and older.payload == dns.message.from_wire(wire).payload  # OPT untouched
    assert [rrset.ttl for rrset in dns.message.from_wire(aged(wire, 1000)).answer] == [0, 0]
    assert min_ttl(wire[:-3]) is None and aged(wire[:-3], 1) is None
    nodata = dns.message.make_response(dns.message.make_query("a.test", "AAAA")).to_wire()
    assert min_ttl(nodata) is None       # no record: nothing says how long to keep it


def test_rcode_and_truncation_bits():
    resp = dns.message.make_response(dns.message.make_query("a.test", "A"))
    resp.set_rcode(dns.rcode.NXDOMAIN)
    resp.flags |= dns.flags.TC
    wire = resp.to_wire()
    assert rcode(wire) == NXDOMAIN and truncated(wire)
    assert rcode(b"\x00") is None and not truncated(b"\x00")

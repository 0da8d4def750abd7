"""The answer cache (netagent/dns/cache.py): keyed by query, TTLs honoured and aged."""
from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset

from netagent.dns.cache import AnswerCache


def query(name: str, rdtype: str = "A") -> bytes:
    return dns.message.make_query(name, rdtype).to_wire()


def answer(q: bytes, ttl: int = 30, rcode: int = dns.rcode.NOERROR, soa_ttl: int | None = None) -> bytes:
    msg = dns.message.make_response(dns.message.from_wire(q))
    msg.set_rcode(rcode)
    if rcode == dns.rcode.NOERROR:
        msg.answer.append(dns.rrset.from_text(msg.question[0].name, ttl, "IN", "A", "203.0.113.10"))
    if soa_ttl is not None:
        msg.authority.append(dns.rrset.from_text("test.", soa_ttl, "IN", "SOA", "ns.test. h.test. 1 2 3 4 60"))
    return msg.to_wire()


def test_a_hit_has_the_new_query_id_and_aged_ttls_until_the_ttl_runs_out():
    cache = AnswerCache()
    q1 = query("allowed.test")
    assert cache.put(q1, answer(q1, ttl=30), now=100.0)
    q2 = bytearray(q1)
    q2[:2] = b"\x12\x34"        # the same question asked again, another id
    hit = cache.get(bytes(q2), now=110.4)
    msg = dns.message.from_wire(hit)
    assert msg.id == 0x1234 and msg.answer[0].ttl == 20
    assert cache.get(bytes(q2), now=130.0) is None and len(cache) == 0   # expired: gone


def test_keyed_by_the_whole_question():
    cache = AnswerCache()
    qa = query("allowed.test")
    cache.put(qa, answer(qa), now=0.0)
    assert cache.get(query("allowed.test", "TXT"), now=1.0) is None
    assert cache.get(query("other.test"), now=1.0) is None
    assert cache.get(dns.message.make_query("allowed.test", "A", use_edns=0).to_wire(), now=1.0) is None


def test_what_is_not_kept():
    cache = AnswerCache()
    q = query("a.test")
    assert not cache.put(q, answer(q, rcode=dns.rcode.SERVFAIL), now=0.0)
    assert not cache.put(q, answer(q, ttl=0), now=0.0)
    assert not cache.put(q, answer(q, rcode=dns.rcode.NXDOMAIN), now=0.0)   # no SOA: no TTL to honour
    truncated = bytearray(answer(q))
    truncated[2] |= 0x02
    assert not cache.put(q, bytes(truncated), now=0.0)
    assert cache.put(q, answer(q, rcode=dns.rcode.NXDOMAIN, soa_ttl=60), now=0.0)   # negative, with its SOA TTL
    assert dns.message.from_wire(cache.get(q, now=59.0)).rcode() == dns.rcode.NXDOMAIN
    assert cache.get(q, now=60.0) is None


def test_bounded_oldest_first_and_ttl_capped():
    cache = AnswerCache(max_entries=2, max_ttl=10)
    qs = [query(f"h{i}.test") for i in range(3)]
    for i, q in enumerate(qs):
        cache.put(q, answer(q, ttl=1000), now=float(i))
    assert len(cache) == 2 and cache.get(qs[0], now=3.0) is None and cache.get(qs[2], now=3.0) is not None
    assert cache.get(qs[2], now=12.0) is None   # capped at 10 s

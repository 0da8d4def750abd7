"""The proxy's answer cache. Pure: the clock is passed in.

Keyed by the query as sent minus its id (flags, question, EDNS options), so a
hit is exactly the answer that query would have got. An entry lives for the
smallest TTL of its records (capped); a hit is served with every TTL lowered
by the entry's age. Only NOERROR and NXDOMAIN answers with at least one record
(negative answers carry the zone's SOA) and not truncated are kept. The cache
holds answers, not admissions: the proxy decides and admits per sandbox on
every hit (decision.py).
"""
from __future__ import annotations

from collections import OrderedDict

from . import wire as wire_format


class AnswerCache:
    def __init__(self, max_entries: int = 10_000, max_ttl: int = 3600):
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        # key -> (answer, stored at, expires at)
        self._entries: OrderedDict[bytes, tuple[bytes, float, float]] = OrderedDict()

    @staticmethod
    def key(query: bytes) -> bytes:
        return query[2:]

    def get(self, query: bytes, now: float) -> bytes | None:
        """The cached answer with the query's id and aged TTLs, or None."""
        key = self.key(query)
        entry = self._entries.get(key)
        if entry is None:
            return None
        answer, stored, expires = entry
        if now >= expires:
            del self._entries[key]
            return None
        out = wire_format.aged(answer, int(now - stored))
        return None if out is None else query[:2] + out[2:]

    def put(self, query: bytes, answer: bytes, now: float) -> bool:
        """Keep the upstream's answer to this query if it may be cached."""
        if wire_format.rcode(answer) not in (wire_format.NOERROR, wire_format.NXDOMAIN) \
                or wire_format.truncated(answer):
            return False
        ttl = wire_format.min_ttl(answer)
        if not ttl:
            return False
        key = self.key(query)
        self._entries.pop(key, None)
        self._entries[key] = (answer, now, now + min(ttl, self.max_ttl))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)   # the oldest stored goes first
        return True

    def __len__(self) -> int:
        return len(self._entries)

"""Just enough of the DNS wire format for the proxy's hot path (pure):
read the question of a query, build error and empty answers, collect the A
records of a response, and read or age the TTLs of a response for the cache.
Anything unusual returns None, and the proxy falls back to dnspython (or does
not cache), so odd but valid messages are still handled."""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")     # type, class, ttl, rdlength
TYPE_A, TYPE_AAAA, TYPE_OPT, CLASS_IN = 1, 28, 41, 1
HOSTNAME_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*"
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Question:
    qid: int
    name: str            # lower case, with the trailing dot ("www.example.com.")
    end: int             # offset just past the question (header + question bytes)
    qtype: int = TYPE_A


def _read_name(wire: bytes, pos: int) -> tuple[str, int] | None:
    """An uncompressed name (as in a question) -> (text, offset after it)."""
    labels = []
    while True:
        if pos >= len(wire):
            return None
        n = wire[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0 or pos + n > len(wire):
            return None   # compression in a question, or a truncated label
        label = wire[pos:pos + n]
        if label.translate(None, HOSTNAME_BYTES):
            return None   # a dot or other byte inside a label: let dnspython escape it
        labels.append(label)
        pos += n
    return b".".join(labels).decode("ascii").lower() + ".", pos


def parse_query(wire: bytes) -> Question | None:
    """A plain query with one question (opcode QUERY, QR=0), or None."""
    if len(wire) < HEADER.size:
        return None
    qid, flags, qd, _an, _ns, _ar = HEADER.unpack_from(wire)
    if flags & 0x8000 or (flags >> 11) & 0xF or qd != 1:
        return None
    name = _read_name(wire, HEADER.size)
    if name is None or name[1] + 4 > len(wire):
        return None
    qtype = struct.unpack_from("!H", wire, name[1])[0]
    return Question(qid, name[0], name[1] + 4, qtype)


def error_response(wire: bytes, q: Question, rcode: int) -> bytes:
    """The query's question answered with `rcode` and no records (RD copied,
    RA set). With NOERROR this is the empty answer ("no data")."""
    flags = HEADER.unpack_from(wire)[1]
    out_flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode
    return HEADER.pack(q.qid, out_flags, 1, 0, 0, 0) + wire[HEADER.size:q.end]


def _skip_name(wire: bytes, pos: int) -> int | None:
    while pos < len(wire):
        n = wire[pos]
        if n & 0xC0 == 0xC0:
            return pos + 2
        if n & 0xC0:
            return None
        pos += 1 + n
        if n == 0:
            return pos
    return None


def a_records(wire: bytes) -> list[tuple[str, int]] | None:
    """(address, ttl) of every IN A record in the answer section, or None if
    the message cannot be walked (then use dnspython)."""
    if len(wire) < HEADER.size:
        return None
    _qid, _flags, qd, an, _ns, _ar = HEADER.unpack_from(wire)
    pos: int | None = HEADER.size
    for _ in range(qd):
        pos = _skip_name(wire, pos)
        if pos is None:
            return None
        pos += 4
    out = []
    for _ in range(an):
        pos = _skip_name(wire, pos) if pos is not None else None
        if pos is None or pos + RR_FIXED.size > len(wire):
            return None
        rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(wire, pos)
        pos += RR_FIXED.size
        if pos + rdlen > len(wire):
            return None
        if rtype == TYPE_A and rclass == CLASS_IN and rdlen == 4:
            out.append((socket.inet_ntoa(wire[pos:pos + 4]), ttl))
        pos += rdlen
    return out


def rcode(wire: bytes) -> int | None:
    return wire[3] & 0x0F if len(wire) >= HEADER.size else None


def truncated(wire: bytes) -> bool:
    return len(wire) >= HEADER.size and bool(wire[2] & 0x02)


def _records(wire: bytes) -> list[tuple[int, int, int]] | None:
    """(offset of the TTL field, type, ttl) of every record in the answer,
    authority and additional sections, or None if the message cannot be walked."""
    if len(wire) < HEADER.size:
        return None
    _qid, _flags, qd, an, ns, ar = HEADER.unpack_from(wire)
    pos: int | None = HEADER.size
    for _ in range(qd):
        pos = _skip_name(wire, pos) if pos is not None else None
        if pos is None:
            return None
        pos += 4
    out = []
    for _ in range(an + ns + ar):
        pos = _skip_name(wire, pos) if pos is not None else None
        if pos is None or pos + RR_FIXED.size > len(wire):
            return None
        rtype, _rclass, ttl, rdlen = RR_FIXED.unpack_from(wire, pos)
        out.append((pos + 4, rtype, ttl))
        pos += RR_FIXED.size + rdlen
        if pos > len(wire):
            return None
    return out if pos == len(wire) else None


def min_ttl(wire: bytes) -> int | None:
    """The smallest TTL of the response's records (the OPT pseudo-record has
    none), or None if it has no records or cannot be walked."""
    records = _records(wire)
    ttls = [ttl for _pos, rtype, ttl in records or () if rtype != TYPE_OPT]
    return min(ttls) if ttls else None


def aged(wire: bytes, seconds: int) -> bytes | None:
    """The response with every record's TTL lowered by `seconds` (not below 0),
    as a cache serves it, or None if it cannot be walked."""
    records = _records(wire)
    if records is None:
        return None
    out = bytearray(wire)
    for pos, rtype, ttl in records:
        if rtype != TYPE_OPT:
            struct.pack_into("!I", out, pos, max(0, ttl - seconds))
    return bytes(out)

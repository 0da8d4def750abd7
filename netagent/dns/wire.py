"""Just enough of the DNS wire format for the proxy's hot path (pure):
read the question of a query, build REFUSED/SERVFAIL answers, and collect the
A records of a response. Anything unusual returns None, and the proxy falls
back to dnspython, so odd but valid messages are still handled."""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")     # type, class, ttl, rdlength
TYPE_A, CLASS_IN = 1, 1
HOSTNAME_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*"
REFUSED, SERVFAIL = 5, 2


@dataclass(frozen=True)
class Question:
    qid: int
    name: str            # lower case, with the trailing dot ("www.example.com.")
    end: int             # offset just past the question (header + question bytes)


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
    return Question(qid, name[0], name[1] + 4)


def error_response(wire: bytes, q: Question, rcode: int) -> bytes:
    """The query's question answered with `rcode` (RD copied, RA set)."""
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

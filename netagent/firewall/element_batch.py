"""Element adds and deletes as one raw nf_tables netlink batch: BATCH_BEGIN,
one NEWSETELEM / DELSETELEM per run of changes to one set, BATCH_END. The
kernel commits all of it or none of it, like a libnftables transaction.

Why: libnftables parses its JSON, builds the same messages, and reads the
generation around them; measured at p99 6.6-6.9 ms of the host thread under
churn for transactions of a few elements (docs/history/performance-log.md,
"Raw element batches"). Here the messages are laid out from the set's shape
(firewall/set_schema.py) the way nft lays them out (`nft --debug=netlink`):
each field of a concatenation padded to 4 bytes, an interval concatenation's
element as NFTA_SET_ELEM_KEY (first address of each field) and KEY_END (last).

Not encoded (`Unencodable`: the caller falls back to libnftables for the whole
transaction): interval sets of one field (nft sends start and end+1 as two
elements and merges with its cache of the set), verdict maps, datatypes not
in set_schema.DATATYPES. Pure: no I/O.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import elements as el
from .element_probe import (
    NFT_MSG_NEWSETELEM,
    NFTA_DATA_VALUE,
    NFTA_LIST_ELEM,
    NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE,
    NLA_F_NESTED,
)
from .generation import _HEADER, _NFGEN, NFNL_SUBSYS_NFTABLES, NLM_F_REQUEST, NLMSG_ERROR
from .nfnetlink import NLM_F_ACK, attr, cstring
from .set_schema import SetShape
from .table_probe import FAMILIES

NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_DELSETELEM = 14
NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_TIMEOUT, NFTA_SET_ELEM_KEY_END = 2, 4, 10
NLM_F_CREATE = 0x400
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17}
# The elements attribute's length is 16 bits: a longer run of one set's
# changes goes in several messages (of the same batch).
MAX_ELEMENTS_BYTES = 32 * 1024
# Past this a batch would not fit a netlink socket's default send buffer
# (208 KiB): libnftables takes it (it grows its socket's buffer).
MAX_BATCH_BYTES = 128 * 1024


class Unencodable(ValueError):
    """This change has no raw encoding here: use libnftables."""


@dataclass(frozen=True)
class Change:
    verb: str                  # "add" or "delete"
    element: el.Element
    timeout_s: int | None = None


@dataclass(frozen=True)
class Batch:
    data: bytes
    first_seq: int             # BATCH_BEGIN's
    last_seq: int              # the last element message's (sent with NLM_F_ACK)
    labels: Mapping[int, str]  # seq -> what it changes, for error messages


def changes(ops: Sequence[el.Op]) -> list[Change]:
    return [Change(op.verb, op.element) for op in ops]


def timed_changes(set_name: str, keys: Sequence[tuple[el.Key, int]]) -> list[Change]:
    """What HostTable.admit sends: add, delete, add again (restarts each timeout)."""
    adds = [Change("add", el.Element(set_name, k), max(1, ttl)) for k, ttl in keys]
    return adds + [Change("delete", el.Element(set_name, k)) for k, _ in keys] + adds


# ---- one field --------------------------------------------------------------

def _ipv4_span(value: el.Key, interval: bool) -> tuple[bytes, bytes]:
    text = str(value)
    if ("/" in text or "-" in text) and not interval:
        raise Unencodable(f"{text!r}: a range in a set without intervals")
    try:
        if "/" in text or "-" in text:
            if "/" in text:
                net = ipaddress.IPv4Network(text, strict=False)
                return net.network_address.packed, net.broadcast_address.packed
            low, high = (ipaddress.IPv4Address(part.strip()) for part in text.split("-", 1))
            return low.packed, high.packed
        packed = ipaddress.IPv4Address(text).packed
    except ValueError as exc:
        raise Unencodable(f"not an IPv4 address: {text!r}") from exc
    return packed, packed


def _int(value: el.Key, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise Unencodable(f"not {what}: {value!r}")


def field(kind: str, value: el.Key, interval: bool) -> tuple[bytes, bytes]:
    """(first, last) bytes of one field's value, unpadded."""
    if isinstance(value, tuple):
        raise Unencodable(f"a concatenation where a {kind} goes: {value!r}")
    if kind == "ipv4_addr":
        return _ipv4_span(value, interval)
    if kind == "ifname":
        raw = str(value).encode()
        if not raw or len(raw) > 15 or b"\0" in raw:
            raise Unencodable(f"bad interface name {value!r}")
        one = raw.ljust(16, b"\0")
    elif kind == "inet_proto":
        number = PROTOCOLS.get(value) if isinstance(value, str) and not value.isdigit() else _int(value, "a protocol")
        if number is None or not 0 <= number <= 255:
            raise Unencodable(f"unknown protocol {value!r}")
        one = bytes([number])
    elif kind == "inet_service":
        port = _int(value, "a port")
        if not 0 <= port <= 0xFFFF:
            raise Unencodable(f"bad port {value!r}")
        one = struct.pack("!H", port)
    elif kind == "mark":
        mark = _int(value, "a mark")
        if not 0 <= mark <= 0xFFFFFFFF:
            raise Unencodable(f"bad mark {value!r}")
        one = struct.pack("=I", mark)   # nft's mark is host-endian
    else:
        raise Unencodable(f"datatype {kind} is not encoded")
    return one, one


def value_bytes(kinds: tuple[str, ...], length: int, value: el.Key, interval: bool) -> tuple[bytes, bytes]:
    """(first, last) bytes of a key or data: a concatenation's fields each
    padded to 4 bytes; `length` is what the kernel holds for the set."""
    parts = value if isinstance(value, tuple) else (value,)
    if len(parts) != len(kinds):
        raise Unencodable(f"{value!r} does not fit the type {' . '.join(kinds)}")
    spans = [field(kind, part, interval) for kind, part in zip(kinds, parts, strict=True)]
    if len(kinds) == 1:
        first, last = spans[0]
    else:
        first = b"".join(a + b"\0" * (-len(a) % 4) for a, _ in spans)
        last = b"".join(b + b"\0" * (-len(b) % 4) for _, b in spans)
    if len(first) != length:
        raise Unencodable(f"{value!r} encodes to {len(first)} bytes, the set holds {length}")
    return first, last


# ---- one element, one message, one batch --------------------------------------

def _data(kind: int, value: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, attr(NFTA_DATA_VALUE, value))


def element_attrs(shape: SetShape, change: Change) -> bytes:
    """The payload of one NFTA_LIST_ELEM (attribute order as libnftnl's)."""
    if shape.interval and len(shape.key) == 1:
        raise Unencodable(f"{shape.name}: an interval set of one field (start and end elements, merged by nft)")
    e = change.element
    first, last = value_bytes(shape.key, shape.key_len, e.key, shape.interval)
    out = b""
    if change.timeout_s is not None and change.verb == "add":
        out += attr(NFTA_SET_ELEM_TIMEOUT, struct.pack("!Q", change.timeout_s * 1000))
    out += _data(NFTA_SET_ELEM_KEY, first)
    if shape.interval:
        out += _data(NFTA_SET_ELEM_KEY_END, last)
    elif first != last:
        raise Unencodable(f"{shape.name}: a range {e.key!r} in a set without intervals")
    if shape.data is not None and change.verb == "add":
        if e.value is None:
            raise Unencodable(f"{shape.name}: a map element without data")
        if shape.data == ("verdict",):
            raise Unencodable(f"{shape.name}: verdict maps are not encoded")
        data, _ = value_bytes(shape.data, shape.data_len, e.value, False)
        out += _data(NFTA_SET_ELEM_DATA, data)
    elif shape.data is None and e.value is not None:
        raise Unencodable(f"{shape.name} is not a map: {e!r}")
    return out


def _message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


def _control(kind: int, seq: int) -> bytes:
    # res_id names the subsystem the batch is for, in network byte order
    return _message(kind, 0, seq, _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(NFNL_SUBSYS_NFTABLES)))


def encode(family: str, table: str, shapes: Mapping[str, SetShape], todo: Sequence[Change], seq: int) -> Batch:
    """The batch for these changes, in order (Unencodable if any has no raw
    encoding: then none is sent this way). Consecutive changes of one verb
    to one set share a message; messages are numbered from seq + 1."""
    if not todo:
        raise ValueError("an empty batch")
    runs: list[tuple[str, str, list[bytes]]] = []
    for change in todo:
        shape = shapes.get(change.element.set)
        if shape is None:
            raise Unencodable(f"no set {change.element.set} in {family} {table}")
        if change.verb not in ("add", "delete"):
            raise ValueError(f"unknown element verb {change.verb!r}")
        item = attr(NFTA_LIST_ELEM | NLA_F_NESTED, element_attrs(shape, change))
        last = runs[-1] if runs else None
        if last is not None and last[:2] == (change.verb, shape.name) and \
                sum(map(len, last[2])) + len(item) <= MAX_ELEMENTS_BYTES:
            last[2].append(item)
        else:
            runs.append((change.verb, shape.name, [item]))
    head = _NFGEN.pack(FAMILIES[family], 0, 0) + attr(NFTA_SET_ELEM_LIST_TABLE, cstring(table))
    out = [_control(NFNL_MSG_BATCH_BEGIN, seq)]
    labels = {seq: "the batch"}
    for i, (verb, name, items) in enumerate(runs):
        n = seq + 1 + i
        kind = (NFNL_SUBSYS_NFTABLES << 8) | (NFT_MSG_NEWSETELEM if verb == "add" else NFT_MSG_DELSETELEM)
        flags = (NLM_F_CREATE if verb == "add" else 0) | (NLM_F_ACK if i == len(runs) - 1 else 0)
        body = head + attr(NFTA_SET_ELEM_LIST_SET, cstring(name)) + \
            attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, b"".join(items))
        out.append(_message(kind, flags, n, body))
        labels[n] = f"{verb} element {family} {table} {name} ({len(items)})"
    end = seq + 1 + len(runs)
    out.append(_control(NFNL_MSG_BATCH_END, end))
    return Batch(b"".join(out), seq, end - 1, labels)


def renumber(batch: Batch, seq: int) -> Batch:
    """The same batch with its messages numbered from `seq`."""
    data, pos, shift = bytearray(batch.data), 0, seq - batch.first_seq
    while pos + _HEADER.size <= len(data):
        length = struct.unpack_from("=I", data, pos)[0]
        struct.pack_into("=I", data, pos + 8, struct.unpack_from("=I", data, pos + 8)[0] + shift)
        pos += (length + 3) & ~3
    return Batch(bytes(data), seq, batch.last_seq + shift, {k + shift: v for k, v in batch.labels.items()})


# ---- the kernel's answer ------------------------------------------------------

class BatchError(OSError):
    """The kernel refused the batch (and so committed none of it)."""


def reader(batch: Batch):  # type: ignore[no-untyped-def]
    """An answer callable for nlsock.ask: True once the last element message's
    ack has come (the kernel handles a batch inside the send, so every answer
    is queued by then); BatchError naming each refused message. The errors of
    a refused batch come before that ack, or in its place."""
    errors: list[tuple[int, int]] = []

    def answer(data: bytes, _seq: int) -> bool | None:
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, pos)
            if length < _HEADER.size:
                raise OSError(errno.EPROTO, "malformed netlink reply")
            if kind == NLMSG_ERROR and batch.first_seq <= msg_seq <= batch.last_seq and length >= 20:
                (code,) = struct.unpack_from("=i", data, pos + _HEADER.size)
                if code:
                    errors.append((msg_seq, -code))
                # the batch's own error (a failed commit, or a batch refused
                # whole) ends the answer: the element acks may not follow
                if msg_seq == batch.last_seq or (code and msg_seq == batch.first_seq):
                    if errors:
                        raise _error(batch, errors)
                    return True
            pos += (length + 3) & ~3
        return None
    return answer


def _error(batch: Batch, errors: list[tuple[int, int]]) -> BatchError:
    what = "; ".join(f"{batch.labels.get(seq, f'message {seq}')}: {os.strerror(code)}" for seq, code in errors)
    return BatchError(errors[0][1], f"nftables element batch refused, nothing changed: {what}")

"""nfnetlink framing shared by the nflog, nfqueue and xt_queue wires and the
nftables probes. Pure, except `check_ack` (reads one reply from a socket)."""
from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLM_F_DUMP_INTR = 0x10   # on a dump's message: a commit landed since the dump began
NLM_F_DUMP = 0x300
_NLMSGHDR = struct.Struct("=IHHII")   # len, type, flags, seq, pid


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def messages(data: bytes, kind: int) -> Iterator[bytes]:
    """The attributes (past nlmsghdr and nfgenmsg) of every message of this type."""
    pos = 0
    while pos + 16 <= len(data):
        length, msg_kind = struct.unpack_from("=IH", data, pos)
        if length < 16:
            return
        if msg_kind == kind:
            yield data[pos + 20:pos + length]
        pos += (length + 3) & ~3


def replies(data: bytes, seq: int, what: str) -> Iterator[tuple[int, int, bytes]]:
    """(type, flags, attributes past nfgenmsg) of each message of one datagram
    that answers request `seq`. NLMSG_DONE ends a dump; NLMSG_ERROR comes only
    for ENOENT (no such table); acks are skipped; another error raises OSError."""
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        length, kind, flags, msg_seq, _ = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size:
            raise OSError(errno.EPROTO, "malformed netlink reply")
        if msg_seq == seq:
            if kind != NLMSG_ERROR:
                yield kind, flags, data[pos + _NLMSGHDR.size + 4:pos + length]
            elif (code := -struct.unpack_from("=i", data, pos + _NLMSGHDR.size)[0]) == errno.ENOENT:
                yield kind, flags, b""
            elif code:
                raise OSError(code, f"{what}: {os.strerror(code)}")
        pos += (length + 3) & ~3


def spans(buf: bytes) -> Iterator[tuple[int, int, int]]:
    """(type without the nested flag, start of its header, end of its value) of each attribute."""
    pos = 0
    while pos + 4 <= len(buf):
        size, kind = struct.unpack_from("=HH", buf, pos)
        if size < 4:
            return
        yield kind & 0x7FFF, pos, pos + size
        pos += (size + 3) & ~3


def attrs(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """(type without flags, value) of each attribute."""
    for kind, start, end in spans(buf):
        yield kind, buf[start + 4:end]


def first(buf: bytes, kind: int) -> bytes | None:
    """The value of the first attribute of this type (flags ignored), or None."""
    return next((value for k, value in attrs(buf) if k & 0x3FFF == kind), None)


def cstring(value: str) -> bytes:
    """A NUL-terminated name attribute value (ValueError if empty, too long or holding NUL)."""
    raw = value.encode()
    if not raw or len(raw) > 255 or b"\0" in raw:
        raise ValueError(f"bad nft name {value!r}")
    return raw + b"\0"


def check_ack(sock: socket.socket, what: str) -> None:
    """Read the kernel's answer to a request sent with NLM_F_ACK; raise on an error."""
    reply = sock.recv(4096)
    if struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
        code = -struct.unpack_from("=i", reply, 16)[0]
        if code:
            sock.close()
            raise OSError(code, f"{what}: {os.strerror(code)}")

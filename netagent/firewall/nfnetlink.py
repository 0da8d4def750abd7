"""nfnetlink framing shared by the nflog, nfqueue and xt_queue wires and the
nf_tables dumps. Pure, except `check_ack` (reads one reply from a socket)."""
from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterator

NETLINK_NETFILTER = 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300


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


# (complete, the attributes of each message of the asked type): complete is
# False when a commit interrupted the dump, so it may have skipped or repeated
# entries (each one it holds is whole: a message is built under the kernel's lock)
Dump = tuple[bool, list[bytes]]


def dump_reader(kind: int, what: str) -> Callable[[bytes, int], Dump | None]:
    """An answer callable for nlsock.ask that reads a dump to its NLMSG_DONE
    (never stops early: the socket must be drained before its next request).
    ENOENT (the table or set asked for is not there) is a complete, empty
    dump; OSError for any other error.

    Interrupted: NLM_F_DUMP_INTR on a message, or nfgenmsg's res_id changing
    between messages: nf_tables puts its ruleset generation there, and does
    not flag set-element dumps. Seen on 6.18: under a commit loop 36 of 300
    dumps of a set changed generation midway, none flagged; deleting 50
    elements between two datagrams made the rest of the dump leave out 50
    elements that were still there. An interrupted dump keeps what it read
    (its caller decides whether a cut dump will do)."""
    bodies: list[bytes] = []
    res_ids: set[bytes] = set()
    interrupted = False

    def answer(data: bytes, seq: int) -> Dump | None:
        nonlocal interrupted
        pos = 0
        while pos + 16 <= len(data):
            length, msg_kind, flags, msg_seq = struct.unpack_from("=IHHI", data, pos)
            if length < 16:
                raise OSError(errno.EPROTO, "malformed netlink reply")
            if msg_seq == seq:
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if msg_kind in (NLMSG_DONE, NLMSG_ERROR):
                    # DONE carries the dump callback's error (0, or -ENOENT
                    # when the set went away midway); ERROR the request's
                    # (0: the ack that ends a single GET sent with NLM_F_ACK)
                    (code,) = struct.unpack_from("=i", data, pos + 16) if length >= 20 else (0,)
                    if code == -errno.ENOENT:
                        return True, []
                    if code:
                        raise OSError(-code, f"{what}: {os.strerror(-code)}")
                    return not interrupted, bodies
                elif msg_kind == kind and length >= 20:
                    res_ids.add(data[pos + 18:pos + 20])
                    interrupted = interrupted or len(res_ids) > 1
                    bodies.append(data[pos + 20:pos + length])
            pos += (length + 3) & ~3
        return None
    return answer

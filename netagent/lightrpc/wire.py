"""Unary gRPC over HTTP/2, the bytes only (no sockets): the request a client
writes (preface, SETTINGS, a connection WINDOW_UPDATE, HEADERS, DATA) and a
reader that takes the server's bytes in pieces of any size, answers SETTINGS
and PING, and ends in the answer's message or a `CallFailure` with the gRPC
status code name and details (RFC 9113; gRPC's PROTOCOL-HTTP2.md).

One call per connection, on stream 1: the CLI makes a handful of calls, and a
unix socket connects in microseconds. The windows are set to their maximum so
a multi-MB answer never waits for a WINDOW_UPDATE.
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0x9)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x2, 0x4, 0x5
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
STREAM = 1

# gRPC's mapping of an HTTP status without grpc-status, and of RST_STREAM codes.
_HTTP_TO_GRPC = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "UNIMPLEMENTED",
                 429: "UNAVAILABLE", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}
_RST_TO_GRPC = {0x7: "UNAVAILABLE", 0x8: "CANCELLED", 0xB: "RESOURCE_EXHAUSTED", 0xC: "PERMISSION_DENIED"}
CODE_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
              "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


class CallFailure(Exception):
    """A call that ended without an answer: `code` is a gRPC status code name."""

    def __init__(self, code: str, details: str):
        super().__init__(f"{code}: {details}")
        self.code, self.details = code, details


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541 5.1); `first` holds the
    bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = bytearray([first | limit]), value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hpack_literal(name: str, value: str) -> bytes:
    """A literal header field without indexing, new name, no Huffman coding."""
    out = b"\x00"
    for text in (name.encode("ascii"), value.encode("ascii")):
        out += hpack_int(len(text), 7) + text
    return out


def grpc_timeout(seconds: float) -> str:
    """The grpc-timeout header: at most 8 digits, rounded up."""
    for unit, scale in (("m", 1_000), ("S", 1), ("M", 1 / 60), ("H", 1 / 3600)):
        n = -int(-seconds * scale // 1)
        if n < 100_000_000:
            return f"{max(n, 1)}{unit}"
    return "99999999H"


def request(path: str, message: bytes, timeout_s: float, authority: str = "localhost",
            max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Everything a unary call writes, from the preface to the last DATA frame."""
    settings = struct.pack(">HIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)
    block = b"\x83\x86"   # :method POST, :scheme http (static table 3 and 6)
    for name, value in ((":path", path), (":authority", authority), ("content-type", "application/grpc"),
                        ("te", "trailers"), ("grpc-timeout", grpc_timeout(timeout_s))):
        block += hpack_literal(name, value)
    body = struct.pack(">BI", 0, len(message)) + message
    out = [PREFACE, frame(SETTINGS, 0, 0, settings),
           frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)),
           frame(HEADERS, END_HEADERS, STREAM, block)]
    chunks = [body[i:i + max_frame] for i in range(0, len(body), max_frame)]
    out += [frame(DATA, END_STREAM if i == len(chunks) - 1 else 0, STREAM, c) for i, c in enumerate(chunks)]
    return b"".join(out)


@dataclass
class ResponseReader:
    """Feed it the server's bytes; `done` once the answer (or a failure) is in.

    `decode_headers` turns an HPACK block into (name, value) pairs; it must be
    one decoder for the connection (the server's dynamic table lives in it)."""
    decode_headers: Callable[[bytes], list[tuple[str, str]]]
    done: bool = False
    _buffer: bytearray = field(default_factory=bytearray)
    _block: bytearray = field(default_factory=bytearray)   # a header block awaiting CONTINUATION
    _block_ends_stream: bool = False
    _headers: list[tuple[str, str]] | None = None
    _data: bytearray = field(default_factory=bytearray)
    _failure: CallFailure | None = None
    _goaway: CallFailure | None = None

    def feed(self, data: bytes) -> bytes:
        """Take bytes from the server; returns what to write back (ACKs)."""
        self._buffer += data
        out = bytearray()
        while not self.done and len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                break
            kind, flags, stream = struct.unpack(">BBI", self._buffer[3:9])
            payload = bytes(self._buffer[9:9 + length])
            del self._buffer[:9 + length]
            out += self._frame(kind, flags, stream & MAX_WINDOW, payload)
        return bytes(out)

    def closed(self) -> None:
        """The server closed the connection: fail unless the answer is complete."""
        if not self.done:
            self._fail(self._goaway or CallFailure("UNAVAILABLE", "Socket closed"))

    def result(self) -> bytes:
        """The answer's message bytes, or raise the call's failure."""
        if self._failure:
            raise self._failure
        assert self.done, "the answer is not complete"
        return self._message()

    def _fail(self, failure: CallFailure) -> None:
        self._failure, self.done = failure, True

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> bytes:
        if self._block and kind != CONTINUATION:
            self._fail(CallFailure("INTERNAL", "HTTP/2: a header block was interrupted"))
        elif kind == SETTINGS and not flags & ACK:
            return frame(SETTINGS, ACK, 0)
        elif kind == PING and not flags & ACK:
            return frame(PING, ACK, 0, payload)
        elif kind == GOAWAY:
            last_stream, error = struct.unpack(">II", payload[:8])
            failure = CallFailure("UNAVAILABLE", f"the server went away (HTTP/2 GOAWAY, error {error})")
            if last_stream & MAX_WINDOW < STREAM:
                self._fail(failure)     # our stream was never processed
            self._goaway = failure      # else it may still finish
        elif stream != STREAM:
            pass    # WINDOW_UPDATE, SETTINGS ACK and other connection-level frames
        elif kind == RST_STREAM:
            error = int.from_bytes(payload[:4], "big")
            self._fail(CallFailure(_RST_TO_GRPC.get(error, "INTERNAL"),
                                   f"Received RST_STREAM with error code {error}"))
        elif kind == DATA:
            self._data += _unpad(flags, payload)
            if flags & END_STREAM:
                self._fail(CallFailure("INTERNAL", "the answer ended without trailers"))
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                payload = _unpad(flags, payload)
                payload = payload[5:] if flags & PRIORITY else payload
                self._block_ends_stream = bool(flags & END_STREAM)
            self._block += payload
            if flags & END_HEADERS:
                block, self._block = bytes(self._block), bytearray()
                self._header_block(self.decode_headers(block), self._block_ends_stream)
        return b""

    def _header_block(self, pairs: list[tuple[str, str]], ends_stream: bool) -> None:
        if self._headers is None:       # the response headers (or trailers-only)
            self._headers = pairs
        if not ends_stream:
            return
        fields = dict(pairs)
        if "grpc-status" not in fields:
            status = dict(self._headers).get(":status", "")
            code = "UNKNOWN" if status == "200" else _HTTP_TO_GRPC.get(int(status or 0), "UNKNOWN")
            self._fail(CallFailure(code, f"HTTP status {status or 'missing'}, no grpc-status"))
            return
        code = int(fields["grpc-status"])
        if code != 0:
            name = CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else "UNKNOWN"
            self._fail(CallFailure(name, percent_decoded(fields.get("grpc-message", ""))))
            return
        self.done = True

    def _message(self) -> bytes:
        """The one length-prefixed message of a unary answer."""
        if len(self._data) < 5:
            raise CallFailure("INTERNAL", "the answer holds no message")
        compressed, length = struct.unpack(">BI", self._data[:5])
        if compressed:
            raise CallFailure("INTERNAL", "a compressed answer was not asked for")
        if len(self._data) != 5 + length:
            raise CallFailure("INTERNAL", f"message of {len(self._data) - 5} bytes, its prefix says {length}")
        return bytes(self._data[5:])


def percent_decoded(text: str) -> str:
    """grpc-message's percent-encoding of UTF-8 (urllib.parse would cost ~8 ms
    of imports for this)."""
    if "%" not in text:
        return text
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "%" and _is_hex(text[i + 1:i + 3]):
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    return payload[1:len(payload) - payload[0]]

"""HTTP/1.1 message heads and body framing (RFC 9112), for a proxy.

Heads are read whole (at most MAX_HEAD bytes); bodies are never read whole:
BodyReader yields the decoded payload piece by piece and BodyWriter frames it
again for the other side, so memory per exchange stays bounded.
"""
from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_HEAD = 64 * 1024          # a request or response head, and a trailer section
READ_SIZE = 64 * 1024         # one body piece
CRLF = b"\r\n"

TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_BAD_VALUE_CHARS = re.compile(r"[\r\n\x00]")

# Never forwarded (RFC 9110 7.6.1); the framing headers are set again per side.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
                        "content-length"})
_NEVER_LISTED = frozenset({"host"})  # `Connection: host` must not strip Host


class HttpError(Exception):
    """A message we refuse; `status` is what the peer on the other side gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Headers:
    """An ordered multi-map with case-insensitive names."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self.items: list[tuple[str, str]] = list(items)

    def get(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.items if k.lower() == name), None)

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.items if k.lower() == name]

    def tokens(self, name: str) -> list[str]:
        """Comma-separated list values of every `name` field, lowercased."""
        return [t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()]

    def add(self, name: str, value: str) -> None:
        self.items.append((name, value))

    def remove(self, names: Iterable[str]) -> None:
        drop = {n.lower() for n in names}
        self.items = [(k, v) for k, v in self.items if k.lower() not in drop]

    def set(self, name: str, value: str) -> None:
        self.remove([name])
        self.add(name, value)

    def encode(self) -> bytes:
        return "".join(f"{k}: {v}\r\n" for k, v in self.items).encode("latin-1")


@dataclass
class RequestHead:
    method: str
    target: str
    version: tuple[int, int]
    headers: Headers = field(default_factory=Headers)

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 without `Connection: close` (HTTP/1.0 clients get one exchange)."""
        return self.version >= (1, 1) and "close" not in self.headers.tokens("connection")

    @property
    def upgrade(self) -> str | None:
        """The Upgrade value if the client asks for a protocol switch (HTTP/1.1 only)."""
        if self.version < (1, 1) or "upgrade" not in self.headers.tokens("connection"):
            return None
        return ", ".join(self.headers.get_all("upgrade")) or None


@dataclass
class ResponseHead:
    version: tuple[int, int]
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)

    @property
    def reusable(self) -> bool:
        """May the connection carry another exchange after this one (if cleanly framed)?"""
        tokens = self.headers.tokens("connection")
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens


# -- heads ----------------------------------------------------------------------------------

async def read_head(reader: asyncio.StreamReader, error_status: int = 400, too_large: int = 431) -> bytes | None:
    """The bytes of one head up to and including the blank line; None on a clean EOF
    before any byte. The reader's limit must be MAX_HEAD (streams opened with limit=MAX_HEAD)."""
    try:
        data = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HttpError(error_status, "connection closed inside a message head") from None
    except asyncio.LimitOverrunError:
        raise HttpError(too_large, f"message head larger than {MAX_HEAD} bytes") from None
    if len(data) > MAX_HEAD:
        raise HttpError(too_large, f"message head larger than {MAX_HEAD} bytes")
    return data.lstrip(b"\r\n")   # RFC 9112 2.2: ignore empty lines before a request line


def _parse_fields(lines: list[str], status: int) -> Headers:
    headers = Headers()
    for line in lines:
        if line[:1] in (" ", "\t"):
            raise HttpError(status, "obsolete line folding in a header field")
        name, colon, value = line.partition(":")
        if not colon or not TOKEN.fullmatch(name):
            raise HttpError(status, f"malformed header field {line[:60]!r}")
        value = value.strip(" \t")
        if _BAD_VALUE_CHARS.search(value):
            raise HttpError(status, f"invalid character in header field {name!r}")
        headers.add(name, value)
    return headers


def _parse_version(text: str, status: int) -> tuple[int, int]:
    m = _VERSION.fullmatch(text)
    if not m:
        raise HttpError(status, f"malformed HTTP version {text[:20]!r}")
    version = (int(m[1]), int(m[2]))
    if version[0] != 1:
        raise HttpError(505 if status == 400 else status, f"HTTP version {text} is not supported")
    return version


def parse_request_head(data: bytes) -> RequestHead:
    lines = data.decode("latin-1").split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HttpError(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not TOKEN.fullmatch(method):
        raise HttpError(400, "malformed request method")
    if not target or any(c <= " " or c == "\x7f" for c in target):
        raise HttpError(400, "malformed request target")
    return RequestHead(method, target, _parse_version(version, 400), _parse_fields(lines[1:], 400))


def parse_response_head(data: bytes) -> ResponseHead:
    """Errors carry status 502: a bad upstream answer is the edge's client's bad gateway."""
    lines = data.decode("latin-1").split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HttpError(502, "empty response from upstream")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 599:
        raise HttpError(502, f"malformed status line from upstream {lines[0][:60]!r}")
    return ResponseHead(_parse_version(version, 502), int(code), reason, _parse_fields(lines[1:], 502))


def encode_request_head(method: str, target: str, headers: Headers) -> bytes:
    return f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + headers.encode() + CRLF


def encode_response_head(status: int, reason: str, headers: Headers) -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1") + headers.encode() + CRLF


def strip_hop_by_hop(headers: Headers) -> Headers:
    """A copy without hop-by-hop fields, including those named by Connection."""
    listed = set(headers.tokens("connection")) - _NEVER_LISTED
    drop = HOP_BY_HOP | listed
    return Headers((k, v) for k, v in headers.items if k.lower() not in drop)


# -- body framing ---------------------------------------------------------------------------

class Framing(enum.Enum):
    NONE = "none"          # no body
    LENGTH = "length"      # Content-Length bytes
    CHUNKED = "chunked"    # chunked transfer coding, optional trailers
    CLOSE = "close"        # until the connection closes (responses only)


@dataclass(frozen=True)
class BodyFraming:
    kind: Framing
    length: int = 0

    @property
    def empty(self) -> bool:
        return self.kind is Framing.NONE or (self.kind is Framing.LENGTH and self.length == 0)


NO_BODY = BodyFraming(Framing.NONE)


def parse_content_length(values: list[str]) -> int | None:
    """The length if every listed value is the same decimal number, else None."""
    items = {v.strip() for value in values for v in value.split(",")}
    if len(items) != 1:
        return None
    (text,) = items
    return int(text) if text.isdigit() and text.isascii() and len(text) <= 18 else None


def request_framing(head: RequestHead) -> BodyFraming:
    """RFC 9112 6.3 for requests; ambiguous framing is refused (no smuggling)."""
    te = head.headers.tokens("transfer-encoding")
    cl = head.headers.get_all("content-length")
    if head.headers.get_all("transfer-encoding"):
        if head.version < (1, 1):
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if cl:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        if not te or te[-1] != "chunked":
            raise HttpError(400, "request Transfer-Encoding does not end with chunked")
        if te != ["chunked"]:
            raise HttpError(501, f"transfer coding {', '.join(te)} is not supported")
        return BodyFraming(Framing.CHUNKED)
    if cl:
        length = parse_content_length(cl)
        if length is None:
            raise HttpError(400, "invalid Content-Length")
        return BodyFraming(Framing.LENGTH, length)
    return NO_BODY


def response_framing(head: ResponseHead, request_method: str) -> BodyFraming:
    """RFC 9112 6.3 for responses. The edge sends no TE but `trailers`, so a transfer
    coding other than chunked is an upstream error."""
    if request_method == "HEAD" or head.status < 200 or head.status in (204, 304):
        return NO_BODY
    if head.headers.get_all("transfer-encoding"):
        te = head.headers.tokens("transfer-encoding")
        if te != ["chunked"]:
            raise HttpError(502, f"upstream used transfer coding {', '.join(te) or '(empty)'}")
        return BodyFraming(Framing.CHUNKED)
    cl = head.headers.get_all("content-length")
    if cl:
        length = parse_content_length(cl)
        if length is None:
            raise HttpError(502, "invalid Content-Length from upstream")
        return BodyFraming(Framing.LENGTH, length)
    return BodyFraming(Framing.CLOSE)


class BodyReader:
    """Reads one body, returning decoded payload pieces; b"" once the body is complete.
    A body cut short raises HttpError(error_status)."""

    def __init__(self, reader: asyncio.StreamReader, framing: BodyFraming, error_status: int = 400) -> None:
        self.reader = reader
        self.framing = framing
        self.error_status = error_status
        self.trailers = Headers()
        self.done = framing.empty
        self._left = framing.length if framing.kind is Framing.LENGTH else 0

    async def read(self) -> bytes:
        if self.done:
            return b""
        kind = self.framing.kind
        if kind is Framing.LENGTH:
            data = await self.reader.read(min(self._left, READ_SIZE))
            if not data:
                raise HttpError(self.error_status, "connection closed inside a body")
            self._left -= len(data)
            self.done = self._left == 0
            return data
        if kind is Framing.CLOSE:
            data = await self.reader.read(READ_SIZE)
            self.done = not data
            return data
        return await self._read_chunked()

    async def _read_chunked(self) -> bytes:
        if self._left == 0:
            size = await self._chunk_size()
            if size == 0:
                await self._read_trailers()
                self.done = True
                return b""
            self._left = size
        data = await self.reader.read(min(self._left, READ_SIZE))
        if not data:
            raise HttpError(self.error_status, "connection closed inside a chunk")
        self._left -= len(data)
        if self._left == 0 and await self._exactly(2) != CRLF:
            raise HttpError(self.error_status, "chunk data not followed by CRLF")
        return data

    async def _chunk_size(self) -> int:
        line = await self._line()
        size_text = line.split(b";", 1)[0].rstrip(b" \t")   # chunk extensions are dropped
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise HttpError(self.error_status, "malformed chunk size")
        return int(size_text, 16)

    async def _read_trailers(self) -> None:
        lines: list[str] = []
        total = 0
        while line := await self._line():
            total += len(line) + 2
            if total > MAX_HEAD:
                raise HttpError(self.error_status, "trailer section too large")
            lines.append(line.decode("latin-1"))
        self.trailers = strip_hop_by_hop(_parse_fields(lines, self.error_status))

    async def _line(self) -> bytes:
        try:
            line = await self.reader.readuntil(CRLF)
        except asyncio.IncompleteReadError:
            raise HttpError(self.error_status, "connection closed inside chunked framing") from None
        except asyncio.LimitOverrunError:
            raise HttpError(self.error_status, "chunk framing line too long") from None
        return line[:-2]

    async def _exactly(self, n: int) -> bytes:
        try:
            return await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise HttpError(self.error_status, "connection closed inside chunked framing") from None


class BodyWriter:
    """Writes payload pieces as-is (Content-Length or close-delimited) or chunked."""

    def __init__(self, writer: asyncio.StreamWriter, chunked: bool) -> None:
        self.writer = writer
        self.chunked = chunked

    async def write(self, data: bytes) -> None:
        if not data:
            return
        if self.chunked:
            self.writer.writelines((b"%x\r\n" % len(data), data, CRLF))
        else:
            self.writer.write(data)
        await self.writer.drain()

    async def finish(self, trailers: Headers | None = None) -> None:
        if self.chunked:
            self.writer.write(b"0\r\n" + (trailers.encode() if trailers else b"") + CRLF)
            await self.writer.drain()


async def copy_body(source: BodyReader, sink: BodyWriter, forward_trailers: bool) -> None:
    while data := await source.read():
        await sink.write(data)
    await sink.finish(source.trailers if forward_trailers else None)

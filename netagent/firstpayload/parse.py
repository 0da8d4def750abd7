"""What the first payload of a flow names. Pure: bytes in, a result out.

A TLS ClientHello (possibly in several records) names its SNI; an HTTP/1
request names its Host (and the authority of an absolute or CONNECT target,
which must agree); HTTP/2 prior knowledge names nothing we read (its
`:authority` is HPACK-coded) and counts as nameless. Anything malformed,
ambiguous or oversized is `Garbage`: the caller refuses it.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

MAX_FIRST_PAYLOAD = 64 * 1024     # a ClientHello or header block longer than this is refused
TLS, HTTP = "tls", "http"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_NAME = re.compile(rb"[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?")
_IPV4 = re.compile(rb"\d{1,3}(?:\.\d{1,3}){3}")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_EXT_SNI, _EXT_ECH, _EXT_ESNI = 0x0000, 0xFE0D, 0xFFCE


@dataclass(frozen=True)
class Named:
    kind: str          # TLS or HTTP
    name: str          # lower case, no trailing dot, no port


@dataclass(frozen=True)
class Nameless:
    kind: str          # a whole message that names no host (no SNI, HTTP/1.0 without Host, h2c)


@dataclass(frozen=True)
class NeedMore:
    kind: str          # a valid prefix: wait for the next segment


@dataclass(frozen=True)
class Garbage:
    kind: str
    why: str


Result = Named | Nameless | NeedMore | Garbage


def parse(data: bytes) -> Result:
    """Classify by content, not port: a TLS record starts with 0x16."""
    if data[:1] == b"\x16":
        result = parse_tls(data)
    elif H2_PREFACE.startswith(data[:len(H2_PREFACE)]):
        result = Nameless(HTTP) if len(data) >= len(H2_PREFACE) else NeedMore(HTTP)
    else:
        result = parse_http(data)
    if isinstance(result, NeedMore) and len(data) >= MAX_FIRST_PAYLOAD:
        return Garbage(result.kind, f"no complete message in {MAX_FIRST_PAYLOAD} bytes")
    return result


def _hostname(raw: bytes) -> str | None:
    raw = raw.lower()
    if len(raw) > 254 or not _NAME.fullmatch(raw):
        return None
    return raw.decode().rstrip(".")


# --- TLS ---------------------------------------------------------------------

def _handshake_bytes(data: bytes) -> tuple[bytes, bool] | Garbage:
    """The handshake bytes of the leading records, and whether the last record is cut."""
    out, pos = bytearray(), 0
    while pos + 5 <= len(data):
        kind, major, length = data[pos], data[pos + 1], struct.unpack_from("!H", data, pos + 3)[0]
        if kind != 22:
            return Garbage(TLS, f"record type {kind} before the ClientHello ended")
        if major != 3 or length == 0 or length > 16384:
            return Garbage(TLS, "not a TLS record")
        if pos + 5 + length > len(data):
            return bytes(out + data[pos + 5:]), True
        out += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(out) >= 4 and len(out) >= 4 + int.from_bytes(out[1:4], "big"):
            return bytes(out), False
    return bytes(out), True


def parse_tls(data: bytes) -> Result:
    got = _handshake_bytes(data)
    if isinstance(got, Garbage):
        return got
    hs, _cut = got
    if hs[:1] and hs[0] != 1:
        return Garbage(TLS, f"handshake type {hs[0]}, not ClientHello")
    if len(hs) < 4:
        return NeedMore(TLS)
    length = int.from_bytes(hs[1:4], "big")
    if length > MAX_FIRST_PAYLOAD:
        return Garbage(TLS, f"ClientHello of {length} bytes")
    if len(hs) < 4 + length:
        return NeedMore(TLS)
    try:
        return _client_hello(memoryview(hs)[4:4 + length])
    except (IndexError, struct.error, ValueError) as exc:
        return Garbage(TLS, f"malformed ClientHello ({exc})")


class _Reader:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ValueError("field runs past its end")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, n: int) -> memoryview:
        return self.take(self.int(n))

    def done(self) -> bool:
        return self.pos == len(self.buf)


def _client_hello(body: memoryview) -> Result:
    r = _Reader(body)
    r.take(2 + 32)                       # legacy_version, random
    if len(r.vector(1)) > 32:
        raise ValueError("session id over 32 bytes")
    r.vector(2)                          # cipher suites
    r.vector(1)                          # compression methods
    if r.done():
        return Nameless(TLS)             # no extensions at all
    ext = _Reader(r.vector(2))
    if not r.done():
        raise ValueError("bytes after the extensions")
    names: list[str] = []
    seen: set[int] = set()
    while not ext.done():
        kind, value = ext.int(2), ext.vector(2)
        if kind in seen:
            return Garbage(TLS, f"extension {kind:#06x} twice")
        seen.add(kind)
        if kind in (_EXT_ECH, _EXT_ESNI):
            return Garbage(TLS, "encrypted ClientHello: the real name is hidden")
        if kind == _EXT_SNI:
            names += _sni_names(_Reader(value))
    if len(names) > 1:
        return Garbage(TLS, "several server names")
    return Named(TLS, names[0]) if names else Nameless(TLS)


def _sni_names(r: _Reader) -> list[str]:
    entries = _Reader(r.vector(2))
    if not r.done():
        raise ValueError("bytes after the server name list")
    names = []
    while not entries.done():
        kind, raw = entries.int(1), bytes(entries.vector(2))
        if kind != 0:
            raise ValueError(f"server name type {kind}")
        name = _hostname(raw)
        if name is None:
            raise ValueError("server name is not a host name")
        names.append(name)
    return names


# --- HTTP/1 --------------------------------------------------------------------

def parse_http(data: bytes) -> Result:
    """An HTTP/1 request head. The head ends at the first empty line, bare LF
    or CRLF alike, so no lenient server sees a whole head before we do."""
    if b"\0" in data:
        return Garbage(HTTP, "NUL in the request head")
    end = re.search(rb"\r?\n\r?\n", data)
    head = data[:end.start()] if end else data
    if re.search(rb"\r(?!\n)", head + (b"\n" if end is None and head.endswith(b"\r") else b"")):
        return Garbage(HTTP, "bare CR in the request head")
    lines = re.split(rb"\r?\n", head)
    line = lines[0]
    if end is None and len(lines) == 1:
        method = line.split(b" ", 1)[0]
        if method and not _TOKEN.fullmatch(method) or len(line) > 8192:
            return Garbage(HTTP, "not an HTTP request")
        return NeedMore(HTTP)
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not re.fullmatch(rb"HTTP/1\.[01]", parts[2]):
        return Garbage(HTTP, "not an HTTP/1 request line")
    if end is None:
        return NeedMore(HTTP)
    return _request_head(parts[0], parts[1], lines[1:])


def _request_head(method: bytes, target: bytes, header_lines: list[bytes]) -> Result:
    hosts = []
    for h in header_lines:
        if h[:1] in (b" ", b"\t"):
            return Garbage(HTTP, "folded header line")
        name, sep, value = h.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            return Garbage(HTTP, "malformed header line")
        if name.lower() == b"host":
            hosts.append(value.strip(b" \t"))
    if len(hosts) > 1:
        return Garbage(HTTP, "several Host headers")
    target_authority = _target_authority(method, target)
    if isinstance(target_authority, Garbage):
        return target_authority
    named = [_host_of(a) for a in ([hosts[0]] if hosts else []) + ([target_authority] if target_authority else [])]
    if any(isinstance(n, Garbage) for n in named):
        return next(n for n in named if isinstance(n, Garbage))
    names = {n for n in named if n is not None}
    if len(names) > 1:
        return Garbage(HTTP, "the target and the Host header name different hosts")
    return Named(HTTP, names.pop()) if names else Nameless(HTTP)   # type: ignore[arg-type]


def _target_authority(method: bytes, target: bytes) -> bytes | None | Garbage:
    if method == b"CONNECT":
        return target
    m = re.match(rb"(?i)[a-z][a-z0-9+.-]*://([^/?#]*)", target)
    if m:
        return m.group(1)
    if target.startswith(b"/") or target == b"*":
        return None
    return Garbage(HTTP, "unknown request target form")


def _host_of(authority: bytes) -> str | None | Garbage:
    """The host of `host[:port]`; None for an IPv4 literal (it names no domain)."""
    if b"@" in authority:
        return Garbage(HTTP, "userinfo in the authority")
    host, _, port = authority.rpartition(b":") if b":" in authority else (authority, b"", b"")
    if port and not port.isdigit():
        return Garbage(HTTP, "bad port in the authority")
    if not host:
        return Garbage(HTTP, "empty host")
    if _IPV4.fullmatch(host):
        return None
    name = _hostname(host)
    return name if name is not None else Garbage(HTTP, "the host is not a host name")

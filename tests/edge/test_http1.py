"""HTTP/1.1 heads and body framing, fed from in-memory StreamReaders."""
from __future__ import annotations

import asyncio

import pytest

from netagent.edge.http1 import (
    MAX_HEAD,
    BodyFraming,
    BodyReader,
    Framing,
    Headers,
    HttpError,
    parse_request_head,
    parse_response_head,
    read_head,
    request_framing,
    response_framing,
    strip_hop_by_hop,
)


def reader_of(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=MAX_HEAD)
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


async def request(raw: bytes):
    data = await read_head(reader_of(raw))
    assert data is not None
    return parse_request_head(data)


async def test_request_head() -> None:
    head = await request(b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: 3000-a.d\r\nX-Multi: 1\r\nx-multi:  2 \r\n\r\n")
    assert (head.method, head.target, head.version) == ("GET", "/a/b?x=1&y=%20", (1, 1))
    assert head.headers.get("HOST") == "3000-a.d"
    assert head.headers.get_all("X-Multi") == ["1", "2"]
    assert head.keep_alive and head.upgrade is None


async def test_leading_empty_line_is_ignored() -> None:
    assert (await request(b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")).method == "GET"


async def test_clean_eof_and_truncated_head() -> None:
    assert await read_head(reader_of(b"")) is None
    with pytest.raises(HttpError) as exc:
        await read_head(reader_of(b"GET / HTTP/1.1\r\nHost: x\r\n"))
    assert exc.value.status == 400


async def test_head_limit_is_431() -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"a" * MAX_HEAD + b"\r\n\r\n"
    with pytest.raises(HttpError) as exc:
        await read_head(reader_of(raw))
    assert exc.value.status == 431
    with pytest.raises(HttpError) as exc:
        await read_head(reader_of(raw), error_status=502, too_large=502)
    assert exc.value.status == 502


@pytest.mark.parametrize("raw, status", [
    (b"GET /\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\n\r\n", 400),
    (b"G(T / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTX/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),       # whitespace before the colon
    (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", 400),  # obs-fold
    (b"GET / HTTP/1.1\r\nA: 1\nB: 2\r\n\r\n", 400),       # bare LF inside a field
    (b"GET / HTTP/1.1\r\nA: \x001\r\n\r\n", 400),
])
async def test_bad_request_heads(raw: bytes, status: int) -> None:
    with pytest.raises(HttpError) as exc:
        await request(raw)
    assert exc.value.status == status


def test_response_head() -> None:
    head = parse_response_head(b"HTTP/1.1 404 Not Found Here\r\nContent-Length: 3\r\n\r\n")
    assert (head.status, head.reason, head.headers.get("content-length")) == (404, "Not Found Here", "3")
    assert parse_response_head(b"HTTP/1.1 204\r\n\r\n").reason == ""
    assert parse_response_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").reusable is False
    assert parse_response_head(b"HTTP/1.0 200 OK\r\n\r\n").reusable is False
    for bad in (b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n", b"ICY 200 OK\r\n\r\n"):
        with pytest.raises(HttpError) as exc:
            parse_response_head(bad)
        assert exc.value.status == 502


async def test_request_framing() -> None:
    def framing(raw: bytes) -> BodyFraming:
        return request_framing(parse_request_head(raw))

    assert framing(b"GET / HTTP/1.1\r\n\r\n").kind is Framing.NONE
    assert framing(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n") == BodyFraming(Framing.LENGTH, 12)
    assert framing(b"POST / HTTP/1.1\r\nContent-Length: 12, 12\r\n\r\n") == BodyFraming(Framing.LENGTH, 12)
    assert framing(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").empty
    assert framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").kind is Framing.CHUNKED
    for raw, status in [
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ]:
        with pytest.raises(HttpError) as exc:
            framing(raw)
        assert exc.value.status == status, raw


def test_response_framing() -> None:
    def framing(raw: bytes, method: str = "GET") -> BodyFraming:
        return response_framing(parse_response_head(raw), method)

    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n") == BodyFraming(Framing.LENGTH, 5)
    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD").kind is Framing.NONE
    assert framing(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n").kind is Framing.NONE
    assert framing(b"HTTP/1.1 304 Not Modified\r\n\r\n").kind is Framing.NONE
    assert framing(b"HTTP/1.1 100 Continue\r\n\r\n").kind is Framing.NONE
    assert framing(b"HTTP/1.1 200 OK\r\n\r\n").kind is Framing.CLOSE
    # Transfer-Encoding wins over Content-Length
    assert framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").kind \
        is Framing.CHUNKED
    for raw in (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"):
        with pytest.raises(HttpError) as exc:
            framing(raw)
        assert exc.value.status == 502


async def read_all(body: BodyReader) -> bytes:
    parts = []
    while data := await body.read():
        parts.append(data)
    return b"".join(parts)


async def test_chunked_body_with_extensions_and_trailers() -> None:
    reader = reader_of(b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\nConnection: x\r\n\r\nNEXT")
    body = BodyReader(reader, BodyFraming(Framing.CHUNKED))
    assert await read_all(body) == b"hello world"
    assert body.done and body.trailers.items == [("X-Sum", "1")]   # hop-by-hop trailer fields dropped
    assert await reader.read() == b"NEXT"     # nothing past the body was consumed


async def test_length_body_stops_at_its_length() -> None:
    reader = reader_of(b"abcdefNEXT")
    assert await read_all(BodyReader(reader, BodyFraming(Framing.LENGTH, 6))) == b"abcdef"
    assert await reader.read() == b"NEXT"


async def test_close_delimited_body() -> None:
    assert await read_all(BodyReader(reader_of(b"x" * 200_000), BodyFraming(Framing.CLOSE))) == b"x" * 200_000


@pytest.mark.parametrize("framing, raw", [
    (BodyFraming(Framing.LENGTH, 10), b"short"),
    (BodyFraming(Framing.CHUNKED), b"5\r\nhel"),
    (BodyFraming(Framing.CHUNKED), b"5\r\nhelloXX0\r\n\r\n"),
    (BodyFraming(Framing.CHUNKED), b"zz\r\n"),
    (BodyFraming(Framing.CHUNKED), b"-5\r\nhello\r\n"),
    (BodyFraming(Framing.CHUNKED), b"1ffffffffffffffff\r\n"),
    (BodyFraming(Framing.CHUNKED), b"0\r\nX: 1\r\n"),
])
async def test_bad_bodies(framing: BodyFraming, raw: bytes) -> None:
    with pytest.raises(HttpError) as exc:
        await read_all(BodyReader(reader_of(raw), framing, error_status=502))
    assert exc.value.status == 502


def test_hop_by_hop_removal() -> None:
    headers = Headers([("Host", "h"), ("Connection", "keep-alive, X-Secret, host"), ("Keep-Alive", "timeout=5"),
                       ("X-Secret", "s"), ("TE", "trailers"), ("Transfer-Encoding", "chunked"),
                       ("Proxy-Authorization", "Basic x"), ("Proxy-Connection", "keep-alive"), ("Upgrade", "ws"),
                       ("Content-Length", "3"), ("Trailer", "X-Sum"), ("X-Keep", "1")])
    assert strip_hop_by_hop(headers).items == [("Host", "h"), ("X-Keep", "1")]

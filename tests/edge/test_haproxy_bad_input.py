"""Bad input to the HAProxy edge: each gets a clean answer or a close, and another
sandbox's requests keep being served meanwhile."""
from __future__ import annotations

import asyncio
import time

import pytest

from .hap import DOMAIN, running_edge
from .helpers import LOOPBACK, RawClient, UpstreamServer, sandbox

GOOD = f"3000-abc.{DOMAIN}"


@pytest.fixture
async def edge(tmp_path, registry, upstream):
    await registry.put_sandbox(sandbox("abc", {3000: (upstream.port, True)}), ttl_s=300)
    async with running_edge(tmp_path / "edge", registry, request_timeout_s=1.0) as (haproxy, _):
        yield haproxy.http_port


async def still_served(port: int) -> None:
    async with await RawClient.open(port) as client:
        assert (await client.request("GET", "/ok", GOOD)).status == 200


async def raw_exchange(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            return await reader.read()         # everything until the edge closes
    finally:
        writer.close()


async def test_cl_te_smuggling_is_refused_and_nothing_reaches_the_guest(edge: int, upstream: UpstreamServer) -> None:
    smuggled = (f"POST /a HTTP/1.1\r\nHost: {GOOD}\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
                f"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: {GOOD}\r\n\r\n").encode()
    answer = await raw_exchange(edge, smuggled)
    # HAProxy drops Content-Length when Transfer-Encoding is there (RFC 9112 6.3) and closes
    # after the request, so the rest can never be read as a second request.
    assert [(r.method, r.target, r.header("content-length"), r.body_len) for r in upstream.requests] == [
        ("POST", "/a", None, 0)]
    assert answer.count(b"HTTP/1.1 ") == 1 and b"\r\nconnection: close\r\n" in answer.lower()
    await still_served(edge)


async def test_oversized_header_and_host_get_a_clean_answer(edge: int) -> None:
    big_header = f"GET / HTTP/1.1\r\nHost: {GOOD}\r\nX-Big: {'a' * 20000}\r\n\r\n".encode()
    assert (await raw_exchange(edge, big_header)).split(b" ")[:2] in ([b"HTTP/1.1", b"400"], [b"HTTP/1.1", b"431"])
    async with await RawClient.open(edge) as client:       # a valid but too long label: our 400
        assert (await client.request("GET", "/", f"3000-{'a' * 5000}.{DOMAIN}")).status == 400
    await still_served(edge)


async def test_slowloris_is_cut_at_the_request_timeout(edge: int) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, edge)
    start = time.monotonic()
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {GOOD}\r\n".encode())
        answer = b""
        async with asyncio.timeout(5):
            while True:
                await still_served(edge)                           # others are served all along
                try:
                    writer.write(b"X-Slow: 1\r\n")                 # one header line at a time, never the end
                    await writer.drain()
                except ConnectionError:
                    break
                try:
                    answer = await asyncio.wait_for(reader.read(4096), 0.2)
                except TimeoutError:
                    continue
                break
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b""
    assert 0.9 <= time.monotonic() - start <= 3.0                  # request_timeout_s = 1


async def test_a_burst_of_10000_unknown_hosts(edge: int) -> None:
    async def worker(offset: int) -> list[int]:
        statuses = []
        async with await RawClient.open(edge) as client:
            for i in range(offset, 10_000, 20):
                statuses.append((await client.request("GET", "/", f"3000-unknown{i}.{DOMAIN}")).status)
        return statuses

    results = await asyncio.gather(*(worker(k) for k in range(20)), still_served(edge))
    statuses = [s for r in results[:-1] for s in r]
    assert len(statuses) == 10_000 and set(statuses) == {404}
    await still_served(edge)

"""The edge in-process against upstream servers on 127.0.0.1 and a real SqliteRegistry."""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os

import pytest

from netagent.edge import EdgeConfig, EdgeServer
from netagent.registry import PortRecord, SandboxRecord
from netagent.registry.sqlite import SqliteRegistry

from .helpers import EDGE_TEST_V, LOOPBACK, RawClient, UpstreamServer, free_port, sandbox

DOMAIN = "sbx.edge.test"
SHARED = "edge.shared.test"
JSON = {"Accept": "application/json"}
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def host(sandbox_id: str = "abc", port: int = 3000) -> str:
    return f"{port}-{sandbox_id}.{DOMAIN}"


@pytest.fixture
async def edge(registry, upstream):
    """The edge's port; sandbox `abc` has guest port 3000 on the upstream server."""
    await registry.put_sandbox(sandbox("abc", {3000: (upstream.port, True)}), ttl_s=300)
    server = EdgeServer(registry, EdgeConfig(domain=DOMAIN, shared_host=SHARED, connect_timeout_s=1.0))
    _, port = await server.start(LOOPBACK, 0)
    try:
        yield port
    finally:
        await server.stop()


def http_client_get(port: int, requests: list[tuple[str, str, dict[str, str]]]) -> list[tuple[int, dict, bytes]]:
    """Requests over one http.client connection (the stdlib's framing, not ours)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        out = []
        for method, path, headers in requests:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            out.append((resp.status, dict(resp.getheaders()), resp.read()))
        return out
    finally:
        conn.close()


async def test_get_with_path_and_query(edge: int, upstream: UpstreamServer) -> None:
    [(status, headers, body)] = await asyncio.to_thread(
        http_client_get, edge, [("GET", "/a/b%20c?x=1&y=two#", {"Host": host(), "X-Forwarded-For": "6.6.6.6"})])
    assert status == 200
    seen = json.loads(body)
    assert seen["method"] == "GET" and seen["target"] == "/a/b%20c?x=1&y=two#"
    got = dict(seen["headers"])
    assert got["host"] == host()
    assert got["x-forwarded-for"] == LOOPBACK          # a client's own value is not trusted
    assert got["x-forwarded-host"] == host() and got["x-forwarded-proto"] == "http"


async def test_keep_alive_reuses_both_connections(edge: int, upstream: UpstreamServer) -> None:
    async with await RawClient.open(edge) as client:
        for i in range(3):
            resp = await client.request("GET", f"/echo/{i}", host())
            assert resp.status == 200 and resp.json()["target"] == f"/echo/{i}"
        resp = await client.request("GET", "/chunked", host())     # chunked with a trailer
        assert resp.body == b"hello world" and resp.trailers == [("x-checksum", "abc")]
        resp = await client.request("GET", "/close", host())       # close-delimited, re-framed chunked
        assert resp.status == 200 and resp.body == b"until the end"
        assert resp.header("transfer-encoding") == "chunked"
        resp = await client.request("GET", "/after-close", host())
        assert resp.json()["target"] == "/after-close"
    assert upstream.connections == 2       # one until /close ended it, one after


async def test_two_requests_through_http_client(edge: int) -> None:
    results = await asyncio.to_thread(http_client_get, edge, [
        ("GET", "/one", {"Host": host()}), ("HEAD", "/two", {"Host": host()}), ("GET", "/three", {"Host": host()})])
    assert [r[0] for r in results] == [200, 200, 200]
    assert results[1][2] == b"" and int(results[1][1]["Content-Length"]) > 0
    assert json.loads(results[2][2])["target"] == "/three"


async def test_te_trailers_and_trailer_header(edge: int, upstream: UpstreamServer) -> None:
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/chunked", host(), {"TE": "trailers, deflate"})
        assert resp.body == b"hello world" and resp.trailers == [("x-checksum", "abc")]
        assert resp.header("trailer") == "X-Checksum"
    assert upstream.requests[0].header("te") == "trailers"   # only `trailers` goes upstream


async def test_http10_client_gets_close_delimited(edge: int) -> None:
    async with await RawClient.open(edge) as client:
        client.send(f"GET /chunked HTTP/1.0\r\nHost: {host()}\r\n\r\n".encode())
        resp = await client.response()
        assert resp.body == b"hello world" and resp.header("connection") == "close"
        assert resp.header("transfer-encoding") is None


async def test_header_form(edge: int, registry: SqliteRegistry, upstream: UpstreamServer) -> None:
    await registry.put_sandbox(sandbox("Mixed_Case.1", {8080: (upstream.port, True)}), ttl_s=300)
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/h?q=1", SHARED + ":80",
                                    {"X-Sandbox-Id": "Mixed_Case.1", "X-Sandbox-Port": "8080"})
        assert resp.status == 200 and resp.json()["target"] == "/h?q=1"
        resp = await client.request("GET", "/h", SHARED, {"X-Sandbox-Id": "abc", **JSON})
        assert resp.status == 400 and "X-Sandbox-Port" in resp.json()["message"]


async def test_streamed_response_arrives_before_upstream_finishes(edge: int, upstream: UpstreamServer) -> None:
    async with await RawClient.open(edge) as client:
        client.send(f"GET /wait HTTP/1.1\r\nHost: {host()}\r\n\r\n".encode())
        status, headers = await asyncio.wait_for(client.response_head(), 5)
        assert status == 200
        first = await asyncio.wait_for(client.reader.readuntil(b"first\r\n"), 5)
        assert first.endswith(b"5\r\nfirst\r\n") and not upstream.release.is_set()
        upstream.release.set()
        rest = await asyncio.wait_for(client.reader.readuntil(b"0\r\n\r\n"), 5)
        assert rest == b"4\r\nlast\r\n0\r\n\r\n"


async def test_large_chunked_response_intact(edge: int, upstream: UpstreamServer) -> None:
    piece = os.urandom(1 << 20)

    async def big(req, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(20):
            writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    upstream.handlers["/big"] = big
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/big", host())
    assert resp.status == 200 and len(resp.body) == 20 << 20
    assert hashlib.sha256(resp.body).digest() == hashlib.sha256(piece * 20).digest()


async def test_upload_content_length(edge: int) -> None:
    body = os.urandom(3 << 20)
    async with await RawClient.open(edge) as client:
        resp = await client.request("POST", "/echo", host(), body=body)
    seen = resp.json()
    assert seen["body_len"] == len(body) and seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert dict(seen["headers"])["content-length"] == str(len(body))


async def test_upload_chunked_is_streamed(edge: int, upstream: UpstreamServer) -> None:
    """The upstream sees the first chunk while the client still holds back the rest."""
    first, rest = os.urandom(100_000), os.urandom(2_000_000)
    async with await RawClient.open(edge) as client:
        client.send(f"POST /upload-wait HTTP/1.1\r\nHost: {host()}\r\nTransfer-Encoding: chunked\r\n"
                    f"Trailer: X-Sum\r\n\r\n".encode() + b"%x\r\n" % len(first) + first + b"\r\n")
        await asyncio.wait_for(upstream.first_body_bytes.wait(), 5)
        client.send(b"%x\r\n" % len(rest) + rest + b"\r\n0\r\nX-Sum: 42\r\n\r\n")
        resp = await asyncio.wait_for(client.response(), 10)
        seen = resp.json()
        assert seen["body_len"] == len(first) + len(rest)
        assert seen["body_sha256"] == hashlib.sha256(first + rest).hexdigest()
        assert seen["trailers"] == [["x-sum", "42"]]
        assert dict(seen["headers"])["transfer-encoding"] == "chunked"
        # and the connection still serves a next request
        assert (await client.request("GET", "/next", host())).json()["target"] == "/next"


async def test_expect_100_continue(edge: int) -> None:
    async with await RawClient.open(edge) as client:
        client.send(f"POST /echo HTTP/1.1\r\nHost: {host()}\r\nContent-Length: 4\r\n"
                    f"Expect: 100-continue\r\n\r\n".encode())
        status, _ = await asyncio.wait_for(client.response_head(), 5)    # the interim answer comes through
        assert status == 100
        client.send(b"data")
        resp = await client.response()
        assert resp.json()["body_len"] == 4
        assert dict(resp.json()["headers"])["expect"] == "100-continue"


async def test_early_answer_to_an_upload(edge: int, upstream: UpstreamServer) -> None:
    """The upstream answers 413 without reading the body: the client gets the 413 and the
    connection closes (its body was never read)."""
    async def reject(req, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return True

    upstream.raw_handlers["/reject"] = reject
    async with await RawClient.open(edge) as client:
        client.send(f"POST /reject HTTP/1.1\r\nHost: {host()}\r\nContent-Length: 10000000\r\n\r\n".encode()
                    + b"x" * 1000)
        resp = await asyncio.wait_for(client.response(), 5)
        assert resp.status == 413
        assert await client.closed_by_peer(timeout=5)


async def test_websocket_upgrade_splices_both_ways(edge: int) -> None:
    async with await RawClient.open(edge) as client:
        client.send(f"GET /ws HTTP/1.1\r\nHost: {host()}\r\nConnection: keep-alive, Upgrade\r\n"
                    f"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        status, headers = await asyncio.wait_for(client.response_head(), 5)
        assert status == 101 and ("upgrade", "websocket") in headers and ("connection", "Upgrade") in headers
        for message in (b"ping", b"\x00\xffbinary", b"x" * 100_000):
            client.send(message)
            expected = b"echo:" + message
            got = b""
            while len(got) < len(expected) or not got.startswith(b"echo:"):
                got += await asyncio.wait_for(client.reader.read(200_000), 5)
                if len(got) >= len(expected):
                    break
            assert got.replace(b"echo:", b"") == message
        client.writer.write_eof()
        assert await client.closed_by_peer()


async def test_502_json_when_port_not_reachable(edge: int, registry: SqliteRegistry, upstream: UpstreamServer) -> None:
    await registry.put_sandbox(sandbox("down", {3000: (upstream.port, False), 4000: (upstream.port, None)}), 300)
    async with await RawClient.open(edge) as client:
        for port in (3000, 4000, 5000):
            resp = await client.request("GET", "/", host("down", port), JSON)
            assert resp.status == 502 and resp.header("content-type") == "application/json"
            assert resp.json() == {"sandboxId": "down", "port": port, "message": f"port {port} is not open"}
        assert upstream.requests == []


async def test_502_html_for_a_browser(edge: int, registry: SqliteRegistry, upstream: UpstreamServer) -> None:
    await registry.put_sandbox(sandbox("down", {3000: (upstream.port, False)}), 300)
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/", host("down"), BROWSER)
    assert resp.status == 502 and resp.header("content-type").startswith("text/html")
    assert b"<html>" in resp.body and b"port 3000 is not open" in resp.body


async def test_udp_port_is_not_http(edge: int, registry: SqliteRegistry, upstream: UpstreamServer) -> None:
    await registry.put_sandbox(sandbox("udp", {3000: (upstream.port, True)}, protocol="udp"), 300)
    async with await RawClient.open(edge) as client:
        assert (await client.request("GET", "/", host("udp"), JSON)).status == 502


async def test_502_when_upstream_refuses(edge: int, registry: SqliteRegistry) -> None:
    await registry.put_sandbox(sandbox("refuse", {3000: (free_port(), True)}), 300)
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/", host("refuse"), JSON)
        assert resp.status == 502 and resp.json()["sandboxId"] == "refuse"
        assert "refused" in resp.json()["message"]
        # the client connection survives an edge error
        assert (await client.request("GET", "/", host())).status == 200


async def test_502_when_upstream_answers_garbage(edge: int, upstream: UpstreamServer) -> None:
    async def garbage(req, reader, writer) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        return False

    upstream.handlers["/garbage"] = garbage
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/garbage", host(), JSON)
    assert resp.status == 502 and resp.header("connection") == "close"


async def test_stale_upstream_connection_is_retried(edge: int, upstream: UpstreamServer) -> None:
    async def then_close(req, reader, writer) -> bool:
        await upstream._echo(req, reader, writer)
        return False       # keep-alive framing, but the upstream closes right after

    upstream.handlers["/then-close"] = then_close
    async with await RawClient.open(edge) as client:
        assert (await client.request("GET", "/then-close", host())).status == 200
        await asyncio.sleep(0.1)
        assert (await client.request("GET", "/again", host())).json()["target"] == "/again"
    assert upstream.connections == 2


async def test_404_unknown_sandbox(edge: int, registry: SqliteRegistry, upstream: UpstreamServer) -> None:
    await registry.put_sandbox(sandbox("gone", {3000: (upstream.port, True)}, seq=1), 300)
    await registry.put_sandbox(sandbox("gone", {}, seq=2).tombstone("gone", "node-1", 2, 0.0), 300)
    async with await RawClient.open(edge) as client:
        for sid in ("nope", "gone"):
            resp = await client.request("GET", "/", host(sid), JSON)
            assert resp.status == 404
            assert resp.json() == {"sandboxId": sid, "port": 3000, "message": f"sandbox {sid} not found"}
        resp = await client.request("GET", "/", host("nope"))
        assert resp.status == 404 and resp.header("content-type").startswith("text/html")


@pytest.mark.parametrize("bad_host", [f"abc-x.{DOMAIN}", f"3000.{DOMAIN}", "3000-abc.wrong.test",
                                      f"70000-abc.{DOMAIN}"])
async def test_400_malformed_host(edge: int, bad_host: str) -> None:
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/", bad_host, JSON)
        assert resp.status == 400 and resp.json()["sandboxId"] is None
        assert (await client.request("GET", "/", host())).status == 200   # still usable


@pytest.mark.parametrize("raw, status", [
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                            # no Host
    (f"GET / HTTP/1.1\r\nHost: {host()}\r\nHost: {host()}\r\n\r\n".encode(), 400),
    (f"POST / HTTP/1.1\r\nHost: {host()}\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".encode(), 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"NOT HTTP\r\n\r\n", 400),
    (f"CONNECT {host()}:443 HTTP/1.1\r\nHost: {host()}\r\n\r\n".encode(), 405),
])
async def test_bad_requests_are_refused_and_closed(edge: int, raw: bytes, status: int,
                                                    upstream: UpstreamServer) -> None:
    async with await RawClient.open(edge) as client:
        client.send(raw)
        resp = await asyncio.wait_for(client.response(), 5)
        assert resp.status == status
        assert await client.closed_by_peer()
    assert upstream.requests == []


async def test_absolute_form_target(edge: int) -> None:
    async with await RawClient.open(edge) as client:
        client.send(f"GET http://{host()}/abs?q=1 HTTP/1.1\r\nHost: ignored.test\r\n\r\n".encode())
        resp = await client.response()
        assert resp.status == 200 and resp.json()["target"] == "/abs?q=1"
        assert dict(resp.json()["headers"])["host"] == host()


async def test_truncated_upstream_body_closes_the_client(edge: int, upstream: UpstreamServer) -> None:
    async def short(req, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        return False

    upstream.handlers["/short"] = short
    async with await RawClient.open(edge) as client:
        client.send(f"GET /short HTTP/1.1\r\nHost: {host()}\r\n\r\n".encode())
        status, headers = await client.response_head()
        assert status == 200 and ("content-length", "100") in headers
        assert await asyncio.wait_for(client.reader.read(), 5) == b"only this"


async def test_registry_cache_lasts_at_most_its_ttl(edge: int, registry: SqliteRegistry,
                                                    upstream: UpstreamServer) -> None:
    """The default 250 ms cache: a port that stops answering is refused within 250 ms."""
    await registry.put_sandbox(sandbox("flip", {3000: (upstream.port, True)}, seq=1), 300)
    async with await RawClient.open(edge) as client:
        assert (await client.request("GET", "/", host("flip"))).status == 200
        await registry.put_sandbox(sandbox("flip", {3000: (upstream.port, False)}, seq=2), 300)
        await asyncio.sleep(0.3)
        assert (await client.request("GET", "/", host("flip"), JSON)).status == 502


async def test_without_cache_every_request_reads_the_registry(registry: SqliteRegistry,
                                                              upstream: UpstreamServer) -> None:
    server = EdgeServer(registry, EdgeConfig(domain=DOMAIN, cache_ttl_s=0))
    _, port = await server.start(LOOPBACK, 0)
    try:
        await registry.put_sandbox(sandbox("flip", {3000: (upstream.port, True)}, seq=1), 300)
        async with await RawClient.open(port) as client:
            assert (await client.request("GET", "/", host("flip"))).status == 200
            await registry.put_sandbox(sandbox("flip", {3000: (upstream.port, False)}, seq=2), 300)
            assert (await client.request("GET", "/", host("flip"), JSON)).status == 502
    finally:
        await server.stop()
    with pytest.raises(ValueError):
        EdgeConfig(domain=DOMAIN, cache_ttl_s=1.0)


async def test_idle_client_connection_is_closed(registry: SqliteRegistry) -> None:
    server = EdgeServer(registry, EdgeConfig(domain=DOMAIN, idle_timeout_s=0.2))
    _, port = await server.start(LOOPBACK, 0)
    try:
        async with await RawClient.open(port) as client:
            client.send(b"GET / HTTP/1.1\r\n")          # a head that never ends
            assert await client.closed_by_peer(timeout=3)
    finally:
        await server.stop()


async def test_malformed_chunked_upload_is_400(edge: int) -> None:
    async with await RawClient.open(edge) as client:
        client.send(f"POST /echo HTTP/1.1\r\nHost: {host()}\r\nTransfer-Encoding: chunked\r\n"
                    f"Accept: application/json\r\n\r\n5\r\nhello\r\nzz\r\n".encode())
        resp = await asyncio.wait_for(client.response(), 5)
        assert resp.status == 400 and "chunk" in resp.json()["message"]
        assert await client.closed_by_peer()


async def test_a_private_port_is_never_served(edge: int, registry: SqliteRegistry, upstream: UpstreamServer) -> None:
    """The Python proxy checks no tokens, so it must not serve a private port at all."""
    await registry.put_sandbox(SandboxRecord("priv", "node-1", LOOPBACK, 1, 0.0, (
        PortRecord(3000, "tcp", upstream.port, True, 0.0, 0.0, public=False, token_sha256="ab" * 32),),
        v=EDGE_TEST_V), ttl_s=300)
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/", host("priv"), {"X-Access-Token": "anything", **JSON})
    assert resp.status == 401 and upstream.requests == []

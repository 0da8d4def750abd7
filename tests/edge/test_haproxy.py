"""The HAProxy edge: a real haproxy whose maps a running control plane keeps equal
to a real SQLite registry; clients and upstreams on 127.0.0.1."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time

import pytest

from netagent.registry import PortRecord, SandboxRecord
from netagent.registry.sqlite import SqliteRegistry

from .hap import DOMAIN, eventually, running_edge
from .helpers import EDGE_TEST_V, LOOPBACK, RawClient, Request, UpstreamServer, free_port, sandbox

JSON = {"Accept": "application/json"}
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
TOKEN = "s3cret-token"
TOKEN_SHA = hashlib.sha256(TOKEN.encode()).hexdigest()


def host(sandbox_id: str = "abc", port: int = 3000) -> str:
    return f"{port}-{sandbox_id}.{DOMAIN}"


def private(sandbox_id: str, guest: int, host_port: int, token_sha: str = TOKEN_SHA, seq: int = 1,
            host_mask: str = "") -> SandboxRecord:
    return SandboxRecord(sandbox_id, "node-1", LOOPBACK, seq, 0.0, (
        PortRecord(guest, "tcp", host_port, True, 0.0, 0.0, public=False, token_sha256=token_sha,
                   host_mask=host_mask),), v=EDGE_TEST_V)


@pytest.fixture
async def edge(tmp_path, registry, upstream):
    """haproxy's HTTP port; sandbox `abc` has guest port 3000 on the upstream server."""
    await registry.put_sandbox(sandbox("abc", {3000: (upstream.port, True)}), ttl_s=300)
    async with running_edge(tmp_path / "edge", registry, connect_timeout_s=1.0) as (haproxy, _control):
        yield haproxy.http_port


async def status_of(port: int, host_name: str, headers: dict[str, str] | None = None) -> int:
    async with await RawClient.open(port) as client:
        return (await client.request("GET", "/", host_name, headers)).status


async def test_routes_to_the_sandbox_port(edge: int, upstream: UpstreamServer) -> None:
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/a/b?x=1", host(), {"X-Forwarded-For": "6.6.6.6"})
    assert resp.status == 200
    seen = resp.json()
    assert seen["target"] == "/a/b?x=1"
    got = dict(seen["headers"])
    assert got["host"] == host()
    assert got["x-forwarded-for"] == LOOPBACK            # the client's own value is dropped
    assert got["x-forwarded-host"] == host() and got["x-forwarded-proto"] == "http"


async def test_keep_alive_never_carries_another_sandboxs_request(edge: int, registry: SqliteRegistry,
                                                                 upstream: UpstreamServer) -> None:
    other = await UpstreamServer().start()
    try:
        await registry.put_sandbox(sandbox("bbb", {3000: (other.port, True)}), ttl_s=300)
        await eventually(lambda: _is(edge, host("bbb"), 200))
        upstream.requests.clear()
        async with await RawClient.open(edge) as client:
            for i in range(20):
                name = host("abc") if i % 2 == 0 else host("bbb")
                resp = await client.request("GET", f"/echo/{i}", name)
                assert resp.status == 200 and dict(resp.json()["headers"])["host"] == name
        assert [r.header("host") for r in upstream.requests] == [host("abc")] * 10
        assert [r.header("host") for r in other.requests if r.target.startswith("/echo/")] == [host("bbb")] * 10
    finally:
        await other.stop()


async def _is(port: int, host_name: str, status: int, headers: dict[str, str] | None = None) -> bool:
    return await status_of(port, host_name, headers) == status


async def test_502_json_and_html_when_the_port_is_closed(edge: int, registry: SqliteRegistry,
                                                         upstream: UpstreamServer) -> None:
    """The probe said closed and nothing listens: the edge tried, the connect failed, 502."""
    await registry.put_sandbox(sandbox("abc", {3000: (free_port(), False)}, seq=2), ttl_s=300)
    await eventually(lambda: _is(edge, host(), 502))
    upstream.requests.clear()
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/", host(), JSON)
        assert resp.status == 502 and resp.header("content-type") == "application/json"
        assert resp.json() == {"sandboxId": "abc", "port": 3000, "message": "port 3000 is not open"}
        assert resp.header("cache-control") == "no-store"
        assert resp.header("x-netagent-dial-failed") is None
    async with await RawClient.open(edge) as client:        # a failed connect closes the client's connection
        resp = await client.request("GET", "/", host(), BROWSER)
        assert resp.status == 502 and resp.header("content-type").startswith("text/html")
        assert b"port 3000 is not open" in resp.body
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/", host(port=4000), JSON)     # not exposed at all
        assert resp.status == 502 and resp.json()["message"] == "port 4000 is not open"
    assert upstream.requests == []


async def test_a_port_the_probe_called_closed_is_tried(edge: int, registry: SqliteRegistry,
                                                       upstream: UpstreamServer) -> None:
    """No false 502: a server that started after the last probe is served, the request intact."""
    await registry.put_sandbox(sandbox("fresh", {3000: (upstream.port, False)}), ttl_s=300)
    await eventually(lambda: _not_404(edge, host("fresh")))
    async with await RawClient.open(edge) as client:
        resp = await client.request("POST", "/echo/new", host("fresh"), JSON, body=b"x" * 1000)
    assert resp.status == 200
    assert resp.json()["method"] == "POST" and resp.json()["body_len"] == 1000


async def test_a_closed_port_is_answered_at_once(edge: int, registry: SqliteRegistry) -> None:
    """A refused connect is not retried after HAProxy's turn-around (min(timeout connect, 1 s))."""
    await registry.put_sandbox(sandbox("abc", {3000: (free_port(), False)}, seq=2), ttl_s=300)
    await eventually(lambda: _is(edge, host(), 502))
    async with await RawClient.open(edge) as client:
        started = time.monotonic()
        assert (await client.request("GET", "/", host(), JSON)).status == 502
        took = time.monotonic() - started
    assert took < 0.6, f"502 took {took:.3f} s"          # quiet: ~2 ms; with a retry: 1 s


async def test_a_guests_own_503_is_its_own(edge: int, upstream: UpstreamServer) -> None:
    """Only HAProxy's failed connect becomes 502/504: the guest's 503, even carrying the
    edge's marker header, reaches the client as the guest sent it (without the marker)."""
    async def busy(req, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nX-Netagent-Dial-Failed: 1\r\n"
                     b"Content-Length: 4\r\n\r\nbusy")
        await writer.drain()
        return True
    upstream.handlers["/busy"] = busy
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/busy", host(), JSON)
    assert (resp.status, resp.body, resp.header("x-netagent-dial-failed")) == (503, b"busy", None)


async def test_404_for_unknown_and_released_sandboxes(edge: int, registry: SqliteRegistry) -> None:
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/", host("nope"), JSON)
        assert resp.status == 404
        assert resp.json() == {"sandboxId": "nope", "port": 3000, "message": "sandbox nope not found"}
    await registry.put_sandbox(SandboxRecord.tombstone("abc", "node-1", 2, 0.0), ttl_s=300)
    await eventually(lambda: _is(edge, host(), 404))


@pytest.mark.parametrize("bad_host", [
    "abc.sbx.edge.test", "x-abc.sbx.edge.test", "3000.sbx.edge.test", "0-abc.sbx.edge.test",
    "65536-abc.sbx.edge.test", "03000-abc.sbx.edge.test", "3000-abc.other.test", "3000-abc.x.sbx.edge.test",
    "3000-abc-.sbx.edge.test", "3000-" + "a" * 60 + ".sbx.edge.test", "3000-a_b.sbx.edge.test",
])
async def test_400_for_a_malformed_host(edge: int, bad_host: str) -> None:
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/", bad_host, JSON)
    assert resp.status == 400, bad_host
    assert resp.json()["sandboxId"] is None and "host is not" in resp.json()["message"]


async def test_host_matching_ignores_case_port_suffix_and_trailing_dot(edge: int) -> None:
    for name in (host().upper(), host() + ":80", host() + "."):
        assert await status_of(edge, name) == 200, name


async def test_private_port_needs_its_token_in_a_header_or_cookie(edge: int, registry: SqliteRegistry,
                                                                  upstream: UpstreamServer) -> None:
    await registry.put_sandbox(private("priv", 3000, upstream.port), ttl_s=300)
    await eventually(lambda: _is(edge, host("priv"), 401))
    async with await RawClient.open(edge) as client:
        wrong = await client.request("GET", "/", host("priv"), {"X-Access-Token": "nope", **JSON})
        unknown = await client.request("GET", "/", host("gost"), {"X-Access-Token": "nope", **JSON})
        missing = await client.request("GET", "/", host("priv"), JSON)
        ok = await client.request("GET", "/x", host("priv"), {"X-Access-Token": TOKEN})
        cookie = await client.request("GET", "/y", host("priv"), {"Cookie": f"a=b; netagent-access-token={TOKEN}"})
    assert (wrong.status, unknown.status, missing.status) == (401, 401, 401)
    # A token cannot tell an unknown sandbox from a wrong token: same status, headers, message.
    assert wrong.headers == unknown.headers
    assert wrong.json()["message"] == unknown.json()["message"] == "a valid access token is required"
    assert ok.status == 200 and cookie.status == 200
    assert "x-access-token" not in dict(ok.json()["headers"])         # not passed to the guest
    assert [r.target for r in upstream.requests] == ["/x", "/y"]


async def test_token_rotation_takes_effect_within_the_sync_target(edge: int, registry: SqliteRegistry,
                                                                  upstream: UpstreamServer) -> None:
    await registry.put_sandbox(private("priv", 3000, upstream.port), ttl_s=300)
    await eventually(lambda: _is(edge, host("priv"), 200, {"X-Access-Token": TOKEN}))
    new_token = "rotated"
    await registry.put_sandbox(private("priv", 3000, upstream.port, hashlib.sha256(b"rotated").hexdigest(), seq=2),
                               ttl_s=300)
    took = await eventually(lambda: _is(edge, host("priv"), 401, {"X-Access-Token": TOKEN}), every_s=0.005)
    assert took <= 0.2
    assert await status_of(edge, host("priv"), {"X-Access-Token": new_token}) == 200


async def test_a_websocket_upgrade_needs_the_token(edge: int, registry: SqliteRegistry,
                                                   upstream: UpstreamServer) -> None:
    await registry.put_sandbox(private("priv", 3000, upstream.port), ttl_s=300)
    await eventually(lambda: _is(edge, host("priv"), 401))
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/ws", host("priv"), upgrade)
        assert resp.status == 401
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/ws", host("priv"), {**upgrade, "X-Access-Token": TOKEN})
        assert resp.status == 101
        client.send(b"ping")
        assert await asyncio.wait_for(client.reader.readexactly(9), 5) == b"echo:ping"


async def test_host_mask_rewrites_the_host_the_guest_sees(edge: int, registry: SqliteRegistry,
                                                          upstream: UpstreamServer) -> None:
    async def localhost_only(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        ok = req.header("host") == "localhost:3000"        # what a Vite dev server insists on
        body = b"hello" if ok else b"Blocked request. This host is not allowed."
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (200 if ok else 403, len(body), body))
        await writer.drain()
        return True

    upstream.handlers["/vite"] = localhost_only
    assert await _get(edge, host()) == (403, b"Blocked request. This host is not allowed.")
    masked = SandboxRecord("abc", "node-1", LOOPBACK, 5, 0.0, (
        PortRecord(3000, "tcp", upstream.port, True, 0.0, 0.0, host_mask="localhost:{port}"),), v=EDGE_TEST_V)
    await registry.put_sandbox(masked, ttl_s=300)
    await eventually(lambda: _get_is(edge, host(), 200))
    assert await _get(edge, host()) == (200, b"hello")


async def _get(port: int, host_name: str) -> tuple[int, bytes]:
    async with await RawClient.open(port) as client:
        resp = await client.request("GET", "/vite", host_name)
        return resp.status, resp.body


async def _get_is(port: int, host_name: str, status: int) -> bool:
    return (await _get(port, host_name))[0] == status


async def test_504_when_the_sandbox_port_does_not_accept(edge: int, registry: SqliteRegistry) -> None:
    await registry.put_sandbox(sandbox("dead", {3000: (free_port(), True)}), ttl_s=300)
    await eventually(lambda: _not_404(edge, host("dead")))
    async with await RawClient.open(edge) as client:
        resp = await client.request("GET", "/", host("dead"), JSON)
    assert resp.status == 504 and resp.header("cache-control") == "no-store"
    assert "did not accept" in json.loads(resp.body)["message"]


async def _not_404(port: int, host_name: str) -> bool:
    return await status_of(port, host_name) != 404


async def test_unreadable_record_is_502(edge: int, registry: SqliteRegistry, tmp_path) -> None:
    """A record of another schema version: the sandbox is there, none of its ports is served."""
    await asyncio.to_thread(_write_raw_row, registry.path, "newer", json.dumps({"v": 2, "sandbox_id": "newer"}))
    await eventually(lambda: _is(edge, host("newer"), 502))


def _write_raw_row(path: str, sandbox_id: str, raw: str) -> None:
    import sqlite3
    import time
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO sandboxes VALUES (?, 'node-x', ?, 0, ?, ?, 1000000)",
                   (sandbox_id, int(time.time() * 1e6), time.time() + 300, raw))


async def test_trust_forwarded_keeps_a_trusted_proxys_headers(tmp_path, registry, upstream) -> None:
    await registry.put_sandbox(sandbox("abc", {3000: (upstream.port, True)}), ttl_s=300)
    sent = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "front.example", "X-Forwarded-Proto": "https"}
    async with running_edge(tmp_path / "trusting", registry, trust_forwarded=True) as (haproxy, _):
        async with await RawClient.open(haproxy.http_port) as client:
            headers = (await client.request("GET", "/", host(), sent)).json()["headers"]
    # HAProxy appends its own X-Forwarded-For line after the trusted proxy's.
    assert [v for k, v in headers if k == "x-forwarded-for"] == ["6.6.6.6", LOOPBACK]
    got = dict(headers)
    assert got["x-forwarded-host"] == "front.example" and got["x-forwarded-proto"] == "https"


async def test_every_edge_answer_is_no_store(edge: int, registry: SqliteRegistry, upstream: UpstreamServer) -> None:
    await registry.put_sandbox(private("priv", 3000, upstream.port), ttl_s=300)
    await eventually(lambda: _is(edge, host("priv"), 401))
    async with await RawClient.open(edge) as client:
        for name, status in ((host("priv"), 401), (host("nope"), 404), (host(port=4000), 502),
                             ("bad.sbx.edge.test", 400)):
            for accept in (JSON, BROWSER):
                resp = await client.request("GET", "/", name, accept)
                assert (resp.status, resp.header("cache-control")) == (status, "no-store"), (name, accept)
        resp = await client.request("GET", "/", host())                      # the guest's own answer
        assert resp.status == 200 and resp.header("cache-control") is None


SIGNING_KEY = b"k" * 32


def signed(sandbox_id: str, port: int, expires: int, key: bytes = SIGNING_KEY) -> str:
    sig = hmac.new(key, f"{sandbox_id}:{port}:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"/?netagent-expires={expires}&netagent-signature={sig}"


async def test_signed_urls_open_a_private_port_until_they_expire(tmp_path, registry, upstream) -> None:
    await registry.put_sandbox(private("priv", 3000, upstream.port), ttl_s=300)
    async with running_edge(tmp_path / "signing", registry, url_signing_key=SIGNING_KEY) as (haproxy, _):
        port = haproxy.http_port
        await eventually(lambda: _is(port, host("priv"), 401))
        later, past = int(time.time()) + 60, int(time.time()) - 1
        cases = [
            ("priv", signed("priv", 3000, later), 200),
            ("priv", signed("priv", 3000, past), 401),                          # expired
            ("priv", signed("priv", 3000, later, b"x" * 32), 401),              # another key
            ("priv", signed("priv", 3001, later), 401),                         # signed for another port
            ("priv", signed("priv", 3000, later).replace(str(later), str(later + 1)), 401),  # expiry changed
            ("gost", signed("gost", 3000, later), 401),    # a valid signature for an unknown sandbox: same 401
        ]
        async with await RawClient.open(port) as client:
            for sid, target, status in cases:
                resp = await client.request("GET", target, host(sid))
                assert resp.status == status, (target, resp.status)

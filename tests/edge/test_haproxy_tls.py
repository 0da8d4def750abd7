"""The HAProxy edge over TLS (a throwaway CA and a *.domain certificate), HTTP/2 by
ALPN, h2c, WebSocket over HTTP/1.1 and HTTP/2, gRPC to a guest, and bad input."""
from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import subprocess
import time
from concurrent import futures

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from netagent.registry import PortRecord, SandboxRecord
from tests.testbed.haproxy_proc import loopback_port
from tests.testbed.tls import wildcard_pem

from .hap import DOMAIN, eventually, running_edge
from .helpers import EDGE_TEST_V, LOOPBACK, UpstreamServer, sandbox

TOKEN = "tls-token"


def host(sandbox_id: str = "abc", port: int = 3000) -> str:
    return f"{port}-{sandbox_id}.{DOMAIN}"


@pytest.fixture
def pki(tmp_path):
    return wildcard_pem(tmp_path / "pki", DOMAIN)


@pytest.fixture
async def tls_edge(tmp_path, registry, upstream, pki):
    ca, pem = pki
    await registry.put_sandbox(sandbox("abc", {3000: (upstream.port, True)}), ttl_s=300)
    https = loopback_port()
    async with running_edge(tmp_path / "edge", registry, https_listen=(f"127.0.0.1:{https}",), tls_pem=str(pem),
                            https_public_port=https) as (haproxy, _):
        yield haproxy, ca


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True)


def curl_edge(haproxy, ca, name: str, *args: str, scheme: str = "https") -> subprocess.CompletedProcess[str]:
    port = haproxy.https_port if scheme == "https" else haproxy.http_port
    return curl("--resolve", f"{name}:{port}:127.0.0.1", "--cacert", str(ca), *args, f"{scheme}://{name}:{port}/x")


async def test_https_by_alpn_h2_and_http11(tls_edge) -> None:
    haproxy, ca = tls_edge
    for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
        out = await asyncio.to_thread(curl_edge, haproxy, ca, host(), flag, "-o", "/dev/null",
                                      "-w", "%{http_code} %{http_version}")
        assert out.stdout == f"200 {version}", out.stderr


async def test_plain_http_redirects_to_https(tls_edge) -> None:
    haproxy, ca = tls_edge
    out = await asyncio.to_thread(curl_edge, haproxy, ca, host(), "-o", "/dev/null", "-w",
                                  "%{http_code} %{redirect_url}", scheme="http")
    assert out.stdout == f"308 https://{host()}:{haproxy.https_port}/x"


async def test_forwarded_proto_is_https(tls_edge, upstream: UpstreamServer) -> None:
    haproxy, ca = tls_edge
    out = await asyncio.to_thread(curl_edge, haproxy, ca, host(), "--http2")
    assert '["x-forwarded-proto", "https"]' in out.stdout


async def test_h2c_without_tls_when_the_redirect_is_off(tmp_path, registry, upstream) -> None:
    await registry.put_sandbox(sandbox("abc", {3000: (upstream.port, True)}), ttl_s=300)
    async with running_edge(tmp_path / "edge", registry) as (haproxy, _):
        out = await asyncio.to_thread(curl, "--http2-prior-knowledge", "-H", f"Host: {host()}", "-o", "/dev/null",
                                      "-w", "%{http_code} %{http_version}", f"http://127.0.0.1:{haproxy.http_port}/")
    assert out.stdout == "200 2", out.stderr


def h2_websocket(port: int, ca: str, authority: str, headers: list[tuple[str, str]]) -> tuple[str, bytes]:
    """RFC 8441 extended CONNECT over TLS+h2; send b"ping", return (status, echoed bytes)."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((LOOPBACK, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=authority) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        status, echoed, sent = "", b"", False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.RemoteSettingsChanged) and not sent:
                    conn.send_headers(1, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                          (":path", "/ws"), (":authority", authority),
                                          ("sec-websocket-version", "13"), *headers])
                    sent = True
                elif isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"].decode()
                    if status != "200":
                        return status, b""
                    conn.send_data(1, b"ping")
                elif isinstance(event, h2.events.DataReceived):
                    echoed += event.data
                    conn.acknowledge_received_data(len(event.data), 1)
                    if len(echoed) >= 9:
                        return status, echoed
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    return status or "reset", echoed
            sock.sendall(conn.data_to_send())
        return status, echoed


async def test_websocket_over_http2_and_its_token(tls_edge, registry, upstream: UpstreamServer) -> None:
    haproxy, ca = tls_edge
    status, echoed = await asyncio.to_thread(h2_websocket, haproxy.https_port, str(ca), host(), [])
    assert (status, echoed) == ("200", b"echo:ping")
    sha = hashlib.sha256(TOKEN.encode()).hexdigest()
    await registry.put_sandbox(SandboxRecord("priv", "n", LOOPBACK, 1, 0.0, (
        PortRecord(3000, "tcp", upstream.port, True, 0.0, 0.0, public=False, token_sha256=sha),), v=EDGE_TEST_V),
        ttl_s=300)
    await eventually(lambda: _https_is(haproxy, ca, host("priv"), "401"))
    status, _ = await asyncio.to_thread(h2_websocket, haproxy.https_port, str(ca), host("priv"), [])
    assert status == "401"
    status, echoed = await asyncio.to_thread(h2_websocket, haproxy.https_port, str(ca), host("priv"),
                                             [("x-access-token", TOKEN)])
    assert (status, echoed) == ("200", b"echo:ping")


async def _https_is(haproxy, ca, name: str, code: str, negate: bool = False) -> bool:
    out = await asyncio.to_thread(curl_edge, haproxy, ca, name, "-o", "/dev/null", "-w", "%{http_code}")
    return (out.stdout == code) != negate


async def test_grpc_to_a_guest(tls_edge, registry) -> None:
    haproxy, ca = tls_edge
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    guest_port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    try:
        await registry.put_sandbox(sandbox("grpc1", {50051: (guest_port, True)}), ttl_s=300)
        await eventually(lambda: _https_is(haproxy, ca, host("grpc1", 50051), "404", negate=True))

        def check() -> int:
            creds = grpc.ssl_channel_credentials(ca.read_bytes())
            with grpc.secure_channel(f"{LOOPBACK}:{haproxy.https_port}", creds, options=[
                    ("grpc.ssl_target_name_override", host("grpc1", 50051)),
                    ("grpc.default_authority", host("grpc1", 50051))]) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                return reply.status

        assert await asyncio.to_thread(check) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


async def test_bad_tls_input_is_closed_and_others_still_served(tls_edge) -> None:
    haproxy, ca = tls_edge
    # garbage instead of a ClientHello
    reader, writer = await asyncio.open_connection(LOOPBACK, haproxy.https_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
    answer = await asyncio.wait_for(reader.read(), 5)       # closed, after at most a TLS alert record
    assert answer == b"" or answer[:1] == b"\x15"
    writer.close()
    # a name the certificate does not cover (strict-sni): the handshake fails
    out = await asyncio.to_thread(curl, "--resolve", f"other.example:{haproxy.https_port}:127.0.0.1",
                                  "--cacert", str(ca), f"https://other.example:{haproxy.https_port}/")
    assert out.returncode == 35, out.stderr                # CURLE_SSL_CONNECT_ERROR: the handshake failed
    out = await asyncio.to_thread(curl_edge, haproxy, ca, host(), "--http2", "-o", "/dev/null", "-w", "%{http_code}")
    assert out.stdout == "200"

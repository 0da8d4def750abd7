"""Raw TCP through the edge (issue 24 part 3): TLS on --tcp-listen, the SNI names a
port exposed in mode tcp, HAProxy passes the bytes to a TCP echo server standing in
for the guest. Bad input: no SNI, a private port without its token, an unknown or
paused sandbox, a port exposed for HTTP, a client that sends nothing. The 443 front
(--tcp-on-https) and the private port's credential: test_haproxy_tcp443.py."""
from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import replace

import pytest

from netagent.registry import PortRecord, SandboxRecord
from tests.testbed.haproxy_proc import loopback_port
from tests.testbed.tls import wildcard_pem

from .hap import DOMAIN, eventually, running_edge
from .helpers import EDGE_TEST_V, LOOPBACK, sandbox
from .test_haproxy import private


def tcp_sandbox(sandbox_id: str, ports: dict[int, int], token_sha256: str = "") -> SandboxRecord:
    """A record whose guest ports (-> host ports) are exposed in mode tcp; private with a token hash."""
    return SandboxRecord(sandbox_id, "node-1", LOOPBACK, 1, 0.0, tuple(
        PortRecord(guest, "tcp", host, True, 0.0, 0.0, public=not token_sha256, token_sha256=token_sha256,
                   mode="tcp") for guest, host in sorted(ports.items())), v=EDGE_TEST_V)


class EchoServer:
    """Echoes every byte; counts the bytes that reached it."""

    def __init__(self) -> None:
        self.received = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> EchoServer:
        self._server = await asyncio.start_server(self._client, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.received += len(data)
                writer.write(data)
                await writer.drain()
        writer.close()


@pytest.fixture
async def tcp_edge(tmp_path, registry):
    ca, pem = wildcard_pem(tmp_path / "pki", DOMAIN)
    echo = await EchoServer().start()
    await registry.put_sandbox(tcp_sandbox("tcp1", {5432: echo.port}), ttl_s=300)
    tcp_port = loopback_port()
    try:
        async with running_edge(tmp_path / "edge", registry, tls_pem=str(pem),
                                tcp_listen=(f"127.0.0.1:{tcp_port}",)) as (haproxy, _):
            yield tcp_port, ca, echo
    finally:
        await echo.stop()


async def tls_exchange(port: int, ca, sni: str | None, data: bytes) -> bytes:
    """Connect with TLS (SNI sni), send data, read until len(data) bytes or EOF."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if sni is None:
        ctx.check_hostname = False
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ctx, server_hostname=sni or "")
    try:
        writer.write(data)
        await writer.drain()
        got = b""
        async with asyncio.timeout(5):
            while len(got) < len(data) and (chunk := await reader.read(65536)):
                got += chunk
        return got
    finally:
        writer.close()


async def test_tls_by_sni_reaches_the_tcp_port(tcp_edge) -> None:
    port, ca, echo = tcp_edge
    name = f"5432-tcp1.{DOMAIN}"
    await eventually(lambda: _echoes(port, ca, name))
    payload = bytes(range(256)) * 4096                       # 1 MiB both ways
    assert await tls_exchange(port, ca, name, payload) == payload


async def test_no_byte_reaches_a_guest_without_a_right(tcp_edge, registry) -> None:
    port, ca, echo = tcp_edge
    await eventually(lambda: _echoes(port, ca, f"5432-tcp1.{DOMAIN}"))
    await registry.put_sandbox(replace(private("priv", 5432, echo.port), ports=tuple(
        replace(p, mode="tcp") for p in private("priv", 5432, echo.port).ports)), ttl_s=300)
    await registry.put_sandbox(replace(tcp_sandbox("nap", {5432: echo.port}), paused=True), ttl_s=300)
    await registry.put_sandbox(sandbox("web", {5432: (echo.port, True)}), ttl_s=300)      # mode http
    await registry.put_sandbox(tcp_sandbox("seen", {5432: echo.port}), ttl_s=300)
    await eventually(lambda: _echoes(port, ca, f"5432-seen.{DOMAIN}"))   # the edge has the four records
    before = echo.received
    for name in (f"5432-priv.{DOMAIN}", f"5432-nap.{DOMAIN}", f"5432-nobody.{DOMAIN}", f"9-tcp1.{DOMAIN}",
                 f"5432-web.{DOMAIN}"):
        assert await tls_exchange(port, ca, name, b"secret") == b"", name      # closed after the handshake
    with pytest.raises(ssl.SSLError):                                          # no SNI: no handshake
        await tls_exchange(port, ca, None, b"secret")
    assert echo.received == before


async def test_a_client_that_sends_nothing_holds_only_its_own_connection(tcp_edge) -> None:
    port, ca, echo = tcp_edge
    name = f"5432-tcp1.{DOMAIN}"
    await eventually(lambda: _echoes(port, ca, name))
    ctx = ssl.create_default_context(cafile=str(ca))
    _, idle = await asyncio.open_connection(LOOPBACK, port, ssl=ctx, server_hostname=name)
    try:
        assert await tls_exchange(port, ca, name, b"still served") == b"still served"
    finally:
        idle.close()


async def _echoes(port: int, ca, name: str) -> bool:
    try:
        return await tls_exchange(port, ca, name, b"ping") == b"ping"
    except (OSError, ssl.SSLError):
        return False

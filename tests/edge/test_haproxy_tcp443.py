"""Raw TCP on 443 by SNI (--tcp-on-https, issue 24 part 3) with real haproxy: the front
reads the SNI without terminating TLS; a port exposed as tcp reaches the TCP
termination, an HTTP port the HTTPS termination (client address kept by PROXY v2).
A private TCP port's credential is its token in the SNI label. openssl s_client is
the client of the documented command."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import ssl
import subprocess

import pytest

from tests.testbed.haproxy_proc import loopback_port
from tests.testbed.tls import wildcard_pem

from .hap import DOMAIN, eventually, running_edge
from .helpers import LOOPBACK, RawClient, sandbox
from .test_haproxy_tcp import EchoServer, tcp_sandbox, tls_exchange

TOKEN = "k7q2m9x4p8w3z6r1t5v0"          # lowercase letters and digits: it travels in the SNI
TOKEN_SHA = hashlib.sha256(TOKEN.encode()).hexdigest()
SECRET = b"secret\r\n\r\n"


def refused_as_http(got: bytes) -> bool:
    return got.startswith(b"HTTP/1.1 400 ") and b"secret" not in got


@pytest.fixture
async def front(tmp_path, registry, upstream):
    """443 stand-in with the SNI front: `web` 3000 (HTTP, the upstream server), `tcp1`
    5432 (tcp, an echo server), `priv` 22 (tcp, private with TOKEN)."""
    ca, pem = wildcard_pem(tmp_path / "pki", DOMAIN)
    echo = await EchoServer().start()
    await registry.put_sandbox(sandbox("web", {3000: (upstream.port, True)}), ttl_s=300)
    await registry.put_sandbox(tcp_sandbox("tcp1", {5432: echo.port}), ttl_s=300)
    await registry.put_sandbox(tcp_sandbox("priv", {22: echo.port}, token_sha256=TOKEN_SHA), ttl_s=300)
    https_port = loopback_port()
    try:
        async with running_edge(tmp_path / "edge", registry, tls_pem=str(pem), tcp_on_https=True,
                                https_listen=(f"127.0.0.1:{https_port}",), redirect_to_https=False) as (haproxy, _):
            await eventually(lambda: _echoes(https_port, ca, f"5432-tcp1.{DOMAIN}"))
            yield haproxy, https_port, ca, echo
    finally:
        await echo.stop()


async def https_get(port: int, ca, host: str, path: str = "/echo") -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=ctx, server_hostname=host)
    async with RawClient(reader, writer) as client:
        resp = await client.request("GET", path, host)
        return resp.status, (resp.json() if resp.status == 200 else {})


async def test_on_443_a_tcp_port_gets_raw_bytes_and_an_http_port_gets_https(front, upstream) -> None:
    _, port, ca, echo = front
    payload = bytes(range(256)) * 4096                       # 1 MiB both ways, through the front
    assert await tls_exchange(port, ca, f"5432-tcp1.{DOMAIN}", payload) == payload
    status, seen = await https_get(port, ca, f"3000-web.{DOMAIN}")
    assert status == 200
    headers = dict(seen["headers"])
    assert headers["x-forwarded-for"] == LOOPBACK and headers["x-forwarded-proto"] == "https"


async def test_each_port_only_on_its_own_path(front, upstream) -> None:
    haproxy, port, ca, echo = front
    before = echo.received
    async with await RawClient.open(haproxy.http_port) as client:      # the plain HTTP path
        assert (await client.request("GET", "/", f"5432-tcp1.{DOMAIN}")).status == 502
    requests_before = len(upstream.requests)
    # The HTTP port named on the TCP path (a raw TLS client with the SNI of an HTTP port):
    # the front sends it to HTTPS, whose answer is HTTP, not the guest's bytes.
    got = await tls_exchange(port, ca, f"3000-web.{DOMAIN}", b"GET /echo HTTP/1.1\r\nHost: 3000-web." +
                             DOMAIN.encode() + b"\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200")
    assert len(upstream.requests) == requests_before + 1
    assert echo.received == before


async def test_a_private_tcp_port_needs_its_token_in_the_sni(front) -> None:
    _, port, ca, echo = front
    assert await tls_exchange(port, ca, f"22--{TOKEN}-priv.{DOMAIN}", b"ssh bytes") == b"ssh bytes"
    before = echo.received
    wrong = "z" * len(TOKEN)
    for name in (f"22-priv.{DOMAIN}", f"22--{wrong}-priv.{DOMAIN}", f"22--{TOKEN[:-1]}-priv.{DOMAIN}"):
        assert await tls_exchange(port, ca, name, b"secret") == b"", name     # closed after the handshake
    # Not a port exposed as tcp (unknown sandbox, another port): the front hands it to the
    # HTTPS termination, which answers the bytes as a bad HTTP request.
    for name in (f"22--{TOKEN}-nobody.{DOMAIN}", f"5432--{TOKEN}-priv.{DOMAIN}"):
        assert refused_as_http(await tls_exchange(port, ca, name, SECRET)), name
    assert echo.received == before


async def test_bad_input_on_443(front) -> None:
    _, port, ca, echo = front
    before = echo.received
    with pytest.raises(ssl.SSLError):            # no SNI: the HTTPS termination refuses the handshake
        await tls_exchange(port, ca, None, b"secret")
    for name in (f"5432-nobody.{DOMAIN}", f"9-tcp1.{DOMAIN}"):          # unknown sandbox, port not exposed
        assert refused_as_http(await tls_exchange(port, ca, name, SECRET)), name
    # A client that sends nothing holds only its own connection (the front waits for its hello).
    reader, idle = await asyncio.open_connection(LOOPBACK, port)
    try:
        assert await tls_exchange(port, ca, f"5432-tcp1.{DOMAIN}", b"still served") == b"still served"
    finally:
        idle.close()
    assert echo.received == before + len(b"still served")


async def test_openssl_s_client_through_443(front) -> None:
    """The documented client command (docs/edge.md), on the front."""
    _, port, ca, echo = front
    for name in (f"5432-tcp1.{DOMAIN}", f"22--{TOKEN}-priv.{DOMAIN}"):
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-quiet", "-verify_return_error", "-CAfile", str(ca),
            "-connect", f"{LOOPBACK}:{port}", "-servername", name,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"hello from openssl\n")
            await proc.stdin.drain()
            async with asyncio.timeout(10):
                assert await proc.stdout.readline() == b"hello from openssl\n"
        finally:
            proc.kill()
            await proc.wait()


async def _echoes(port: int, ca, name: str) -> bool:
    """The name reaches the echo server. Until the edge knows the port, the front hands the
    name to HTTPS: the CRLFs make that a prompt 400, not a wait for a request head."""
    try:
        return await tls_exchange(port, ca, name, b"ping\r\n\r\n") == b"ping\r\n\r\n"
    except (OSError, ssl.SSLError):
        return False



async def test_a_reload_keeps_both_paths_behind_the_front(front) -> None:
    """The inner unix sockets pass to the new process with the listeners (-x)."""
    haproxy, port, ca, echo = front
    haproxy.reload()
    await eventually(lambda: _echoes(port, ca, f"5432-tcp1.{DOMAIN}"))    # the control plane synced it
    assert await tls_exchange(port, ca, f"5432-tcp1.{DOMAIN}", b"after reload") == b"after reload"
    assert (await https_get(port, ca, f"3000-web.{DOMAIN}"))[0] == 200



async def test_ssh_proxycommand_through_443_carries_the_ssh_protocol(front, tmp_path) -> None:
    """The documented `ssh -o ProxyCommand='openssl s_client …'`, against the echo server: no
    sshd here, so the client meets its own banner and stalls at key exchange; reading the
    banner back proves the SSH bytes crossed the edge both ways."""
    _, port, ca, echo = front
    proxy = (f"openssl s_client -quiet -verify_return_error -CAfile {ca} -connect {LOOPBACK}:{port} "
             f"-servername 5432-tcp1.{DOMAIN}")
    log = tmp_path / "ssh.log"
    banner = "Remote protocol version 2.0, remote software version OpenSSH"
    with open(log, "wb") as err:
        # Its own session: ssh and its ProxyCommand child are stopped together below.
        ssh = subprocess.Popen(["ssh", "-v", "-F", "/dev/null", "-o", f"ProxyCommand={proxy}", "-o", "BatchMode=yes",
                                "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path}/known_hosts",
                                "-o", "ConnectTimeout=5", "user@tcp1", "true"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        async def banner_seen() -> bool:
            return banner in log.read_text(errors="replace") or ssh.poll() is not None
        await eventually(banner_seen, timeout_s=15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ssh.pid, signal.SIGKILL)
        ssh.wait(timeout=10)
    assert banner in log.read_text(errors="replace"), log.read_text(errors="replace")[-2000:]
    assert echo.received > 0

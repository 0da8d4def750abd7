"""The edge survives its own reloads and restarts (issue 27): under a steady request
loop to a live sandbox, with 1,000 other records in the registry, a seamless reload,
a reload with a new certificate, kill -9 of HAProxy, kill -9 of the control plane
and a registry outage during a reload fail no request and never answer 404.

Each window is made by construction: the control plane (its own process) is stopped
with SIGSTOP across a reload or restart, so the new HAProxy process serves from the
map files alone (an unknown host answers 503: not synced), until enough requests
went through it; only then is the control plane let go.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from netagent.edge.haconfig import shard_map
from netagent.edge.maps import shard_of
from netagent.registry import Registry
from netagent.registry.redis import RedisRegistry
from tests.testbed.haproxy_proc import HAProxy, loopback_port
from tests.testbed.tls import issue, wildcard_pem

from .hap import DOMAIN, ControlPlane, eventually
from .helpers import LOOPBACK, UpstreamServer, sandbox

FILL = 1000
LIVE = f"3000-live.{DOMAIN}"
UNKNOWN = f"3000-nobody.{DOMAIN}"
ENOUGH = 20          # requests through each window


@dataclass
class Traffic:
    """A steady loop of requests to one host, each on a new connection (so each goes to
    whichever HAProxy process owns the listener now). Records (status or error, cert)."""
    port: int
    name: str
    tls: ssl.SSLContext | None = None
    results: list[tuple[int | str, str]] = field(default_factory=list)
    in_flight: bool = False

    async def run(self) -> None:
        while True:
            self.in_flight = True
            result = await self._one()
            self.results.append(result)
            self.in_flight = False
            await asyncio.sleep(0.005)

    def mark(self) -> int:
        """Index of the first result of a request begun from now on (the loop makes one at a time)."""
        return len(self.results) + self.in_flight

    async def _one(self) -> tuple[int | str, str]:
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection(
                    LOOPBACK, self.port, ssl=self.tls, server_hostname=self.name if self.tls else None)
                try:
                    cert = ""
                    if self.tls:
                        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                        cert = hashlib.sha256(der).hexdigest()
                    writer.write(f"GET / HTTP/1.1\r\nHost: {self.name}\r\nConnection: close\r\n\r\n".encode())
                    status = int((await reader.readline()).split(b" ")[1])
                    await reader.read()
                    return status, cert
                finally:
                    writer.close()
        except (OSError, IndexError, ValueError, TimeoutError, ssl.SSLError) as exc:
            return type(exc).__name__, ""

    async def more(self, n: int = ENOUGH, timeout_s: float = 30) -> int:
        """Until n requests begun from now on were answered; returns mark() at the start."""
        start = self.mark()
        await eventually(lambda: _true(len(self.results) >= start + n), timeout_s=timeout_s)
        return start

    def statuses(self, since: int = 0) -> list[int | str]:
        return [status for status, _ in self.results[since:]]


async def _true(value: bool) -> bool:
    return value


@contextlib.asynccontextmanager
async def traffic(port: int, name: str, tls: ssl.SSLContext | None = None) -> AsyncIterator[Traffic]:
    loop = Traffic(port, name, tls)
    task = asyncio.create_task(loop.run())
    try:
        await loop.more()
        yield loop
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def status_of(port: int, name: str) -> int | str:
    return (await Traffic(port, name)._one())[0]


async def is_status(port: int, name: str, want: int) -> bool:
    return await status_of(port, name) == want


async def fill(registry: Registry, upstream: UpstreamServer) -> None:
    records = [sandbox(f"fill{i}", {3000: (40000 + i, True)}) for i in range(FILL)]
    await registry.put_many(records, ttl_s=600)
    await registry.put_sandbox(sandbox("live", {3000: (upstream.port, True)}), ttl_s=600)


async def synced_edge(haproxy: HAProxy, control: ControlPlane) -> None:
    """Until the control plane synced this process (unknown: 404) and wrote the live
    sandbox's shard to disk: the state every reload below starts from."""
    control.start()
    async def synced() -> bool:
        return await is_status(haproxy.http_port, UNKNOWN, 404) and await is_status(haproxy.http_port, LIVE, 200)
    await eventually(synced, timeout_s=30)
    live_map = Path(shard_map(haproxy.settings.map_dir, shard_of("live", haproxy.settings.shards)))
    await eventually(lambda: _true(live_map.read_text().startswith("live ") or "\nlive " in live_map.read_text()),
                     timeout_s=30)


@contextlib.asynccontextmanager
async def edge(tmp_path: Path, registry_url: str, **settings: object) -> AsyncIterator[tuple[HAProxy, ControlPlane]]:
    haproxy = HAProxy.for_test(tmp_path / "edge", DOMAIN, **settings)
    control = ControlPlane(haproxy, registry_url, tmp_path)
    haproxy.start()
    try:
        await synced_edge(haproxy, control)
        yield haproxy, control
    finally:
        control.stop()
        haproxy.stop()
        print(control.log()[-3000:])


@contextlib.asynccontextmanager
async def stopped(control: ControlPlane) -> AsyncIterator[None]:
    """The control plane cannot sync anything meanwhile (it has not seen the new process)."""
    control.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        control.signal(signal.SIGCONT)


async def served_from_files_then_synced(haproxy: HAProxy, loop: Traffic, control: ControlPlane) -> None:
    """The new process answers from its map files alone (503 for an unknown host: not
    synced, never 404) for ENOUGH requests; then the control plane, let go, syncs it."""
    assert await status_of(haproxy.http_port, UNKNOWN) == 503
    await loop.more()


def assert_all_ok(loop: Traffic, since: int = 0) -> None:
    statuses = loop.statuses(since)
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


async def test_seamless_reload_keeps_every_route(tmp_path, registry, upstream) -> None:
    await fill(registry, upstream)
    async with edge(tmp_path, registry.url) as (haproxy, control), traffic(haproxy.http_port, LIVE) as loop:
        async with stopped(control):
            before = loop.mark()
            await asyncio.to_thread(haproxy.reload)      # returns once the old process stopped its frontend
            across = loop.mark() - before
            await served_from_files_then_synced(haproxy, loop, control)
        await eventually(lambda: is_status(haproxy.http_port, UNKNOWN, 404), timeout_s=10)
        # The control plane left the old process (its admin connection held it), which exits.
        await eventually(lambda: _true(all(old.poll() is not None for old in haproxy.retired)), timeout_s=10)
        await loop.more()
        assert_all_ok(loop)
        print(f"{len(loop.results)} requests, {across} during the reload itself")


async def test_a_reload_with_a_new_certificate(tmp_path, registry, upstream) -> None:
    await fill(registry, upstream)
    pki = tmp_path / "pki"
    ca, pem = wildcard_pem(pki, DOMAIN)
    first = pem.read_text()
    tls = ssl.create_default_context(cafile=str(ca))
    https = loopback_port()
    async with (edge(tmp_path, registry.url, https_listen=(f"127.0.0.1:{https}",), tls_pem=str(pem),
                     redirect_to_https=False) as (haproxy, control),
                traffic(https, LIVE, tls) as loop):
        crt, key = issue(pki, "renewed", f"DNS:*.{DOMAIN}")
        pem.write_text(crt.read_text() + key.read_text())       # the renewal: same file, new contents
        assert pem.read_text() != first
        old_certs = {cert for _, cert in loop.results}
        async with stopped(control):
            await asyncio.to_thread(haproxy.reload)
            start = await loop.more()
            assert await status_of(haproxy.http_port, UNKNOWN) == 503
        renewed = {cert for _, cert in loop.results[start:]}
        assert len(old_certs) == 1 and len(renewed) == 1 and renewed != old_certs   # the new one is served
        await eventually(lambda: is_status(haproxy.http_port, UNKNOWN, 404), timeout_s=10)
        await loop.more()
        assert_all_ok(loop)


async def test_kill_9_of_haproxy_then_a_restart(tmp_path, registry, upstream) -> None:
    await fill(registry, upstream)
    async with edge(tmp_path, registry.url) as (haproxy, control), traffic(haproxy.http_port, LIVE) as loop:
        async with stopped(control):
            down = len(loop.results)                 # answered before the kill (one may be in flight)
            haproxy.kill()
            await loop.more(1)                       # at least one request while nothing listens
            await asyncio.to_thread(haproxy.start)
            up = loop.mark()
            await served_from_files_then_synced(haproxy, loop, control)
        await eventually(lambda: is_status(haproxy.http_port, UNKNOWN, 404), timeout_s=10)
        await loop.more()
        assert set(loop.statuses()[:down]) == {200}
        assert_all_ok(loop, since=up)
        in_between = loop.statuses()[down:up]
        assert 404 not in in_between and 503 not in in_between
        failed = [s for s in in_between if s != 200]
        print(f"while haproxy was down: {len(failed)} of {len(in_between)} requests failed "
              f"({sorted(set(map(str, failed)))})")


async def test_kill_9_of_the_control_plane_changes_nothing_served(tmp_path, registry, upstream) -> None:
    await fill(registry, upstream)
    async with (edge(tmp_path, registry.url) as (haproxy, control), traffic(haproxy.http_port, LIVE) as loop,
                traffic(haproxy.http_port, UNKNOWN) as unknown):
        maps_before = await asyncio.to_thread(dump_maps, haproxy)
        control.kill()
        await loop.more()
        control.start()
        # The new control plane is following the registry once a new record routes.
        await registry.put_sandbox(sandbox("probe", {3000: (upstream.port, True)}), ttl_s=600)
        await eventually(lambda: is_status(haproxy.http_port, f"3000-probe.{DOMAIN}", 200), timeout_s=30)
        await loop.more()
        await unknown.more()
        maps_after = await asyncio.to_thread(dump_maps, haproxy)
        assert {k: v for k, v in maps_after.items() if not k.startswith("probe")} == maps_before
        assert_all_ok(loop)
        assert set(unknown.statuses()) == {404}


async def test_a_registry_outage_during_a_reload(tmp_path, redis_server, upstream) -> None:
    registry = RedisRegistry(redis_server.url)
    await registry.connect()
    try:
        await fill(registry, upstream)
        async with edge(tmp_path, redis_server.url) as (haproxy, control), traffic(haproxy.http_port, LIVE) as loop:
            redis_server.kill()
            await eventually(lambda: _true("edge: " in control.log() and "full resync" in control.log()),
                             timeout_s=30)
            async with stopped(control):
                await asyncio.to_thread(haproxy.reload)
                await served_from_files_then_synced(haproxy, loop, control)
            # The control plane loads its last state into the new process, registry or not.
            await eventually(lambda: is_status(haproxy.http_port, UNKNOWN, 404), timeout_s=10)
            await loop.more()
            assert_all_ok(loop)
    finally:
        await registry.close()


def dump_maps(haproxy: HAProxy) -> dict[str, str]:
    """Every entry of every shard map of the running process (`show map`)."""
    import socket
    out: dict[str, str] = {}
    for shard in range(haproxy.settings.shards):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(haproxy.settings.admin_socket)
            s.sendall(f"show map {shard_map(haproxy.settings.map_dir, shard)}\n".encode())
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        for line in reply.decode().splitlines():
            if line.strip():
                _ref, key, value = line.split(" ", 2)
                out[key] = value
    assert len(out) >= FILL
    return out


async def test_a_process_not_synced_answers_503_never_404(tmp_path, registry, upstream) -> None:
    """A fresh HAProxy serves what its map files hold; for anything they lack it answers
    503 with Retry-After (JSON or HTML) until the control plane has synced it."""
    haproxy = HAProxy.for_test(tmp_path / "edge", DOMAIN)
    s = haproxy.settings
    Path(s.map_dir).mkdir(parents=True)
    Path(shard_map(s.map_dir, shard_of("ondisk", s.shards))).write_text(
        f"ondisk 1\nondisk/3000 127.0.0.1|{upstream.port}||\n")
    haproxy.start()
    try:
        port = haproxy.http_port
        assert await status_of(port, f"3000-ondisk.{DOMAIN}") == 200
        for name in (UNKNOWN, f"8080-ondisk.{DOMAIN}"):         # unknown sandbox; a port not in the file
            for accept, content_type in (("application/json", "application/json"), ("text/html", "text/html")):
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
                writer.write(f"GET / HTTP/1.1\r\nHost: {name}\r\nAccept: {accept}\r\n"
                             f"Connection: close\r\n\r\n".encode())
                head, _, body = (await reader.read()).partition(b"\r\n\r\n")
                writer.close()
                lines = head.decode().lower().split("\r\n")
                assert lines[0].startswith("http/1.1 503"), lines[0]
                assert "retry-after: 1" in lines and "cache-control: no-store" in lines
                assert any(line.startswith(f"content-type: {content_type}") for line in lines)
                if accept == "application/json":
                    sid = name.split(".")[0].split("-", 1)[1]
                    assert json.loads(body) == {"sandboxId": sid, "port": int(name.split("-")[0]),
                                                "message": "the edge is loading its routes, retry shortly"}
                else:
                    assert b"<h1>503 Service Unavailable</h1>" in body
        # Synced (the registry holds no "ondisk"): unknown is 404 now, and the files follow the registry.
        await registry.put_sandbox(sandbox("live", {3000: (upstream.port, True)}), ttl_s=600)
        control = ControlPlane(haproxy, registry.url, tmp_path)
        control.start()
        try:
            await eventually(lambda: is_status(port, UNKNOWN, 404), timeout_s=30)
            assert await status_of(port, f"3000-ondisk.{DOMAIN}") == 404
            assert await status_of(port, LIVE) == 200
        finally:
            control.stop()
    finally:
        haproxy.stop()

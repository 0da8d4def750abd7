"""Paused sandboxes and wake on request (issue 24 part 1): a real haproxy, the
control plane and its waker, a real SQLite registry, and a resume hook server in
the test bed that writes the sandbox's live record when called."""
from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from concurrent import futures
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from netagent.edge.wakehook import ResumeHook
from netagent.edge.waker import Waker
from netagent.registry import SandboxRecord
from netagent.registry.sqlite import SqliteRegistry
from tests.testbed.haproxy_proc import HAProxy, loopback_port
from tests.testbed.tls import wildcard_pem

from .hap import DOMAIN, edge_process, eventually, running_edge
from .helpers import LOOPBACK, RawClient, UpstreamServer, sandbox
from .hook import HookServer

KEY = b"k" * 32
JSON = {"Accept": "application/json"}


def host(sid: str, port: int = 3000) -> str:
    return f"{port}-{sid}.{DOMAIN}"


def paused(record: SandboxRecord, wake: bool = True, seq: int = 2) -> SandboxRecord:
    return replace(record, paused=True, wake=wake, seq=seq)


@contextlib.asynccontextmanager
async def wake_edge(tmp_path, registry: SqliteRegistry, hook: HookServer, limit_s: float = 30.0, **settings):
    """haproxy routing paused sandboxes to a waker that calls `hook`; yields (http port, waker)."""
    waker_port = loopback_port()
    async with running_edge(tmp_path / "edge", registry, waker=f"127.0.0.1:{waker_port}",
                            connect_timeout_s=1.0, **settings) as (haproxy, control):
        waker = Waker(lambda sid: control.mirror.by_sandbox.get(sid), ResumeHook(hook.url, KEY, limit_s), limit_s)
        await waker.start("127.0.0.1", waker_port)
        try:
            yield haproxy.http_port, waker
        finally:
            await waker.stop()


@pytest.fixture
async def hook(registry: SqliteRegistry, upstream: UpstreamServer):
    """Resumes a sandbox by writing its live record (seq 3, the same node)."""
    async def resume(sid: str) -> None:
        await registry.put_sandbox(sandbox(sid, {3000: (upstream.port, True)}, seq=3), ttl_s=300)
    server = await HookServer(KEY, resume).start()
    try:
        yield server
    finally:
        await server.stop()


async def request(port: int, name: str, method: str = "GET", body: bytes | None = None,
                  headers: dict[str, str] | None = None):
    async with await RawClient.open(port) as client:
        return await client.request(method, "/echo/x", name, headers or JSON, body=body)


async def known(port: int, name: str, status: int) -> bool:
    return (await request(port, name)).status == status


async def test_a_paused_sandbox_without_wake_is_503_with_retry_after(tmp_path, registry, upstream, hook) -> None:
    await registry.put_sandbox(paused(sandbox("nap", {3000: (upstream.port, True)}), wake=False), ttl_s=300)
    async with wake_edge(tmp_path, registry, hook) as (port, waker):
        await eventually(lambda: known(port, host("nap"), 503))
        resp = await request(port, host("nap"))
        assert resp.json() == {"sandboxId": "nap", "port": 3000, "message": "sandbox nap is paused"}
        assert resp.header("retry-after") == "5" and resp.header("cache-control") == "no-store"
        html = await request(port, host("nap"), headers={})
        assert html.status == 503 and b"sandbox nap is paused" in html.body
    assert hook.calls == [] and upstream.requests == []


async def test_an_edge_without_waker_answers_503_for_wake_too(tmp_path, registry, upstream) -> None:
    await registry.put_sandbox(paused(sandbox("nap", {3000: (upstream.port, True)})), ttl_s=300)
    async with running_edge(tmp_path / "edge", registry) as (haproxy, _):
        await eventually(lambda: known(haproxy.http_port, host("nap"), 503))
    assert upstream.requests == []


async def test_a_waker_that_is_down_is_answered_503_not_held(tmp_path, registry, upstream) -> None:
    await registry.put_sandbox(paused(sandbox("nap", {3000: (upstream.port, True)})), ttl_s=300)
    async with running_edge(tmp_path / "edge", registry, waker=f"127.0.0.1:{loopback_port()}") as (haproxy, _):
        await eventually(lambda: known(haproxy.http_port, host("nap"), 503))
        resp = await request(haproxy.http_port, host("nap"))
        assert resp.json()["message"] == "sandbox nap is paused and the edge's waker did not answer"
        assert resp.header("retry-after") == "5"
    assert upstream.requests == []


async def test_a_request_wakes_the_sandbox_and_the_guest_answers_it(tmp_path, registry, upstream, hook) -> None:
    await registry.put_sandbox(paused(sandbox("zz", {3000: (upstream.port, True)})), ttl_s=300)
    async with wake_edge(tmp_path, registry, hook) as (port, waker):
        await eventually(lambda: _mirror_has(waker, "zz", "wake"))
        resp = await request(port, host("zz"), "POST", body=b"b" * 5000)
        assert resp.status == 200
        seen = resp.json()
        assert seen["method"] == "POST" and seen["body_len"] == 5000 and seen["target"] == "/echo/x"
        assert dict(seen["headers"])["host"] == host("zz")
        assert [(c.sandbox_id, c.port, c.signature_ok) for c in hook.calls] == [("zz", 3000, True)]
        assert abs(hook.calls[0].requested_at - time.time()) < 60
        await eventually(lambda: known(port, host("zz"), 200))     # live: HAProxy routes it again
        assert len(hook.calls) == 1 and waker.hook_calls == 1


async def test_a_websocket_upgrade_wakes_the_sandbox_and_is_relayed_both_ways(tmp_path, registry, upstream,
                                                                          hook) -> None:
    await registry.put_sandbox(paused(sandbox("ws", {3000: (upstream.port, True)})), ttl_s=300)
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with wake_edge(tmp_path, registry, hook) as (port, waker):
        await eventually(lambda: _mirror_has(waker, "ws", "wake"))
        async with await RawClient.open(port) as client:
            resp = await client.request("GET", "/ws", host("ws"), upgrade)
            assert resp.status == 101
            for word in (b"ping", b"pong"):
                client.send(word)
                assert await asyncio.wait_for(client.reader.readexactly(9), 5) == b"echo:" + word
    assert [c.sandbox_id for c in hook.calls] == ["ws"]


async def test_an_http2_request_over_tls_wakes_the_sandbox(tmp_path, registry, upstream, hook) -> None:
    """Browsers speak HTTP/2: HAProxy hands the waker HTTP/1.1, the guest gets the request intact."""
    ca, pem = wildcard_pem(tmp_path / "pki", DOMAIN)
    https = loopback_port()
    await registry.put_sandbox(paused(sandbox("hh", {3000: (upstream.port, True)})), ttl_s=300)
    async with wake_edge(tmp_path, registry, hook, https_listen=(f"127.0.0.1:{https}",), tls_pem=str(pem),
                         https_public_port=https) as (_, waker):
        await eventually(lambda: _mirror_has(waker, "hh", "wake"))
        name = host("hh")
        out = await asyncio.to_thread(subprocess.run, [
            "curl", "-sS", "--max-time", "20", "--http2", "--resolve", f"{name}:{https}:127.0.0.1", "--cacert",
            str(ca), "-H", "Accept: application/json", "--data-binary", "h2 body", "-w", "\n%{http_version}",
            f"https://{name}:{https}/echo/h2"], capture_output=True, text=True)
    body, _, version = out.stdout.rpartition("\n")
    assert version == "2", out.stderr
    seen = json.loads(body)
    assert seen["method"] == "POST" and seen["body_len"] == 7 and seen["target"] == "/echo/h2"
    assert [c.sandbox_id for c in hook.calls] == ["hh"]


async def test_a_grpc_call_wakes_the_sandbox_and_the_guest_answers_it(tmp_path, registry, upstream, hook) -> None:
    """gRPC needs HTTP/2 to the guest: the held request goes on through HAProxy's own
    routing once the sandbox is live, so it reaches the guest's gRPC server."""
    ca, pem = wildcard_pem(tmp_path / "pki", DOMAIN)
    https = loopback_port()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    guest_port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    hook.resume = lambda sid: registry.put_sandbox(sandbox(sid, {50051: (guest_port, True)}, seq=3), ttl_s=300)
    await registry.put_sandbox(paused(sandbox("rpc", {50051: (guest_port, True)})), ttl_s=300)
    name = host("rpc", 50051)

    def check() -> int:
        with grpc.secure_channel(f"{LOOPBACK}:{https}", grpc.ssl_channel_credentials(ca.read_bytes()), options=[
                ("grpc.ssl_target_name_override", name), ("grpc.default_authority", name)]) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=20).status
    try:
        async with wake_edge(tmp_path, registry, hook, https_listen=(f"127.0.0.1:{https}",), tls_pem=str(pem),
                             https_public_port=https) as (_, waker):
            await eventually(lambda: _mirror_has(waker, "rpc", "wake"))
            assert await asyncio.to_thread(check) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)
    assert [(c.sandbox_id, c.port) for c in hook.calls] == [("rpc", 50051)]


async def test_a_resume_on_another_host(tmp_path, registry, upstream, hook) -> None:
    other = await UpstreamServer().start()
    try:
        async def resume_on_node_2(sid: str) -> None:     # node-2 claims the record, with its own host port
            moved = replace(sandbox(sid, {3000: (other.port, True)}, seq=1), node_id="node-2")
            await registry.write_sandbox(moved, 300, claim=True)
        hook.resume = resume_on_node_2
        await registry.put_sandbox(paused(sandbox("mv", {3000: (upstream.port, False)})), ttl_s=300)
        async with wake_edge(tmp_path, registry, hook) as (port, waker):
            await eventually(lambda: _mirror_has(waker, "mv", "wake"))
            resp = await request(port, host("mv"), "PUT", body=b"moved")
            assert resp.status == 200 and resp.json()["method"] == "PUT"
        assert [r.method for r in other.requests] == ["PUT"] and upstream.requests == []
    finally:
        await other.stop()


async def test_a_failing_hook_is_answered_503_and_holds_no_one_else(tmp_path, registry, upstream, hook) -> None:
    hook.behaviour.update({"bad": "500", "slow": "hang"})
    for sid in ("bad", "slow", "ok"):
        await registry.put_sandbox(paused(sandbox(sid, {3000: (upstream.port, True)})), ttl_s=300)
    await registry.put_sandbox(sandbox("live", {3000: (upstream.port, True)}), ttl_s=300)
    async with wake_edge(tmp_path, registry, hook, limit_s=3.0) as (port, waker):
        await eventually(lambda: _mirror_has(waker, "slow", "wake"))
        resp = await request(port, host("bad"))
        assert resp.status == 503 and resp.header("retry-after") == "5"
        assert "could not be resumed" in resp.json()["message"] and "500" in resp.json()["message"]
        slow = asyncio.create_task(request(port, host("slow")))
        await eventually(lambda: _waiting(waker, 1))                 # held by the hanging hook
        assert (await request(port, host("live"))).status == 200      # meanwhile: another sandbox
        assert (await request(port, host("ok"))).status == 200        # and another sandbox's wake
        assert not slow.done()
        resp = await asyncio.wait_for(slow, 10)                        # the limit (3 s) passed
        assert resp.status == 503 and "did not resume within 3 s" in resp.json()["message"]
        await eventually(lambda: _forgotten(waker), timeout_s=10)        # refusals are held 2 s, then dropped
    assert sorted(c.sandbox_id for c in hook.calls) == ["bad", "ok", "slow"]


@pytest.mark.timeout(240)
async def test_a_thousand_concurrent_requests_call_the_hook_once(tmp_path, registry, hook) -> None:
    hook.behaviour["many"] = "wait"
    upstream = await UpstreamServer().start(backlog=2048)    # 1,000 relays connect at once
    hook.resume = lambda sid: registry.put_sandbox(sandbox(sid, {3000: (upstream.port, True)}, seq=3), ttl_s=300)
    await registry.put_sandbox(paused(sandbox("many", {3000: (upstream.port, True)})), ttl_s=300)
    async with wake_edge(tmp_path, registry, hook, limit_s=100) as (port, waker):   # the limit counts from
        # the first request: holding all 1,000 takes seconds on a loaded machine
        await eventually(lambda: _mirror_has(waker, "many", "wake"))
        clients = [await RawClient.open(port) for _ in range(1000)]
        try:
            for i, client in enumerate(clients):
                client.send(f"GET /echo/{i} HTTP/1.1\r\nHost: {host('many')}\r\n\r\n".encode())
            await eventually(lambda: _waiting(waker, 1000), timeout_s=60)
            hook.release.set()
            answers = await asyncio.gather(*(c.response() for c in clients))
        finally:
            await asyncio.gather(*(c.close() for c in clients))
            await upstream.stop()
    assert [a.status for a in answers] == [200] * 1000
    assert sorted(a.json()["target"] for a in answers) == sorted(f"/echo/{i}" for i in range(1000))
    assert len(hook.calls) == 1 and waker.hook_calls == 1


async def _mirror_has(waker: Waker, sid: str, state: str) -> bool:
    return (waker.lookup(sid) or {}).get(sid) == state


async def _forgotten(waker: Waker) -> bool:
    return not waker.remembered


async def _waiting(waker: Waker, count: int) -> bool:
    return waker.waiting >= count


async def test_netagent_edge_runs_the_waker(tmp_path, registry, upstream, hook) -> None:
    """`netagent edge` as processes: the config and the control plane both get --waker-listen."""
    await registry.put_sandbox(paused(sandbox("cli", {3000: (upstream.port, True)})), ttl_s=300)
    await registry.put_sandbox(sandbox("synced", {3000: (upstream.port, True)}), ttl_s=300)
    waker = f"127.0.0.1:{loopback_port()}"
    haproxy = HAProxy.for_test(tmp_path / "edge", DOMAIN, waker=waker)
    s = haproxy.settings
    (tmp_path / "hook.key").write_bytes(KEY)
    common = ["--domain", DOMAIN, "--map-dir", s.map_dir, "--shards", str(s.shards), "--haproxy-socket",
              s.admin_socket, "--waker-listen", waker]
    subprocess.run([sys.executable, "-m", "netagent", "edge", *common, "--errors-dir", s.errors_dir,
                    "--http-listen", s.http_listen[0], "--write-haproxy-config", str(haproxy.config_path)],
                   capture_output=True, check=True)
    haproxy.start()
    try:
        with edge_process(*common, "--registry", registry.url, "--wake-hook-url", hook.url,
                          "--wake-hook-key-file", str(tmp_path / "hook.key")) as proc:
            await eventually(lambda: known(haproxy.http_port, host("synced"), 200), timeout_s=15)
            resp = await request(haproxy.http_port, host("cli"), "POST", body=b"wake")   # the waking request
            assert resp.status == 200 and resp.json()["body_len"] == 4
            assert [c.sandbox_id for c in hook.calls] == ["cli"]
            proc.terminate()
            assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        haproxy.stop()

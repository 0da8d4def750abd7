"""The agent and its registry: TTL after a crash, outages, and resync."""
from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from hashlib import sha256

import grpc
import pytest

from netagent.api import netagent_pb2 as pb
from netagent.registry import SandboxRecord, open_registry
from tests.service.daemon import Daemon, write_config
from tests.testbed.bed import LightGuest
from tests.testbed.registry_read import read_record as read


def wait_for(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"{what} not within {timeout}s"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_killed_agent_leaves_no_reachable_record_past_the_ttl(bed, tmp_path):
    url = f"sqlite://{tmp_path}/registry.db"
    ttl = 2.0
    daemon = Daemon(write_config(bed, tmp_path, pool_size=1, registry_url=url, registry_ttl_s=ttl,
                                 registry_heartbeat_s=0.5)).start()
    try:
        with daemon.client() as c:
            sbx = c.allocate("ttl-1")
            guest = LightGuest.attach(bed, sbx.network, "t")
            bed.start_server(guest.name, "--http", "3000")
            c.expose("ttl-1", 3000)

        def reachable() -> bool:
            rec = read(url, "ttl-1")
            return bool(rec and rec.port(3000) and rec.port(3000).reachable)
        wait_for(reachable, 5, "reachable=true in the registry")
        with daemon.client() as c:   # the change was also an event on WatchEvents
            for ev in c.watch_events(0, ["ttl-1"], timeout=5):
                if ev.type == pb.EVENT_TYPE_PORT_REACHABILITY and ev.reachable:
                    assert ev.port.guest_port == 3000 and ev.port.reachable
                    break
        daemon.stop(signal.SIGKILL)
        last = read(url, "ttl-1")    # the agent's last write, reachable=true
        assert last is not None and last.port(3000).reachable
        wait_for(lambda: read(url, "ttl-1") is None, ttl + 2, "the record to expire")
        # Gone no later than the TTL after the agent's last write (+ the 50 ms polling).
        assert time.time() - last.updated_at <= ttl + 0.15
        guest.stop()
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.stop()


def test_registry_outage_the_agent_keeps_working_and_resyncs_within_5s(bed, tmp_path, redis_server):
    url = redis_server.url
    daemon = Daemon(write_config(bed, tmp_path, pool_size=2, registry_url=url)).start()
    try:
        with daemon.client() as c:
            c.allocate("out-1")
            c.expose("out-1", 3000)
            wait_for(lambda: read(url, "out-1") is not None, 3, "out-1 in the registry")
            seq_before = read(url, "out-1").seq

            redis_server.kill()
            wait_for(lambda: not c.host_info().registry_healthy, 5, "the agent to notice the outage")
            assert c.host_info().registry_error
            # The API does not depend on the registry.
            started = time.monotonic()
            c.allocate("out-2")
            c.expose("out-2", 8080)
            assert c.release("out-1")
            assert time.monotonic() - started < 2

            redis_server.start()      # an empty registry: everything must be pushed again
            recovered = time.monotonic()
            wait_for(lambda: (rec := read(url, "out-2")) is not None and rec.port(8080) is not None, 5,
                     "out-2 after recovery")
            assert read(url, "out-1") is None
            assert time.monotonic() - recovered <= 5
            wait_for(lambda: c.host_info().registry_healthy, 5, "registry healthy again")
            assert read(url, "out-2").seq > seq_before
    finally:
        daemon.stop()


def test_stray_records_of_this_node_are_removed_when_the_agent_starts(bed, tmp_path):
    """A release that never reached the registry (agent down, registry down)
    leaves a record of this node the agent no longer owns: it is tombstoned
    when the agent (re)connects."""
    url = f"sqlite://{tmp_path}/registry.db"
    cfg = write_config(bed, tmp_path, pool_size=1, registry_url=url)
    daemon = Daemon(cfg).start()
    try:
        with daemon.client() as c:
            c.allocate("gone-1")
        wait_for(lambda: read(url, "gone-1") is not None, 3, "gone-1 in the registry")
        daemon.stop()
        # Forge a stray record of this node (as if a release never reached the registry).
        rec = read(url, "gone-1")

        async def forge() -> None:
            reg = open_registry(url)
            await reg.put_sandbox(SandboxRecord("stray-1", rec.node_id, rec.node_address, rec.seq, time.time()), 60)
            await reg.close()
        asyncio.run(forge())
        assert read(url, "stray-1") is not None
        daemon = Daemon(cfg).start()
        wait_for(lambda: read(url, "stray-1") is None, 5, "the stray record to be tombstoned")
        assert read(url, "gone-1") is not None

        async def late_write() -> bool:   # the stray's own write, delayed: a tombstone refuses it
            reg = open_registry(url)
            try:
                return await reg.put_sandbox(SandboxRecord("stray-1", rec.node_id, rec.node_address, rec.seq + 1,
                                                           time.time()), 60)
            finally:
                await reg.close()
        assert asyncio.run(late_write()) is False
        assert read(url, "stray-1") is None
    finally:
        daemon.stop()


def test_private_port_access_is_published_as_a_hash_and_survives_a_restart(bed, tmp_path):
    """ExposePort with public=false and a token: the registry holds only the token's SHA-256,
    the daemon never logs the token, one call rotates it, a bad call changes nothing, and a
    restarted agent still publishes the port as private."""
    url = f"sqlite://{tmp_path}/registry.db"
    token, rotated = "first-token-0123456789", "second-token-0123456789"
    sni_token = "k7q2m9x4p8w3z6r1t5v0"
    config = write_config(bed, tmp_path, pool_size=1, registry_url=url, log_level="DEBUG")
    daemon = Daemon(config).start()
    try:
        with daemon.client() as c:
            c.allocate("acc-1")
            c.expose("acc-1", 3000, public=False, access_token=token, host_mask="localhost:{port}")

            def published(sha: str) -> bool:
                port = (rec := read(url, "acc-1")) and rec.port(3000)
                return bool(port and not port.public and port.token_sha256 == sha)
            wait_for(lambda: published(hashlib.sha256(token.encode()).hexdigest()), 5, "the private record")
            assert read(url, "acc-1").port(3000).host_mask == "localhost:{port}"
            c.expose("acc-1", 3000, access_token=rotated)                       # rotation: one call
            wait_for(lambda: published(hashlib.sha256(rotated.encode()).hexdigest()), 1, "the rotated hash")
            with pytest.raises(grpc.RpcError) as err:
                c.expose("acc-1", 3000, access_token="")                         # private without a token
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as err:
                c.expose("acc-1", 3000, host_mask="evil\r\nX: 1")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # mode tcp (#24): a private tcp port's token is its SNI credential, [a-z0-9]
            c.expose("acc-1", 22, public=False, access_token=sni_token, mode="tcp")
            wait_for(lambda: (rec := read(url, "acc-1")) is not None and rec.port(22) is not None
                     and rec.port(22).mode == "tcp", 5, "the tcp port")
            for bad in ({"mode": "udp"}, {"access_token": rotated}):               # rotated has '-'
                with pytest.raises(grpc.RpcError) as err:
                    c.expose("acc-1", 22, **bad)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        daemon.stop()
        first_log = "".join(daemon.log)
        restarted_at = time.time()        # records are written on change and at start, not every heartbeat
        daemon = Daemon(config).start()
        wait_for(lambda: (rec := read(url, "acc-1")) is not None and rec.updated_at > restarted_at, 5,
                 "a fresh write after the restart")
        port = read(url, "acc-1").port(3000)
        assert not port.public and port.token_sha256 == hashlib.sha256(rotated.encode()).hexdigest()
        tcp = read(url, "acc-1").port(22)
        assert (tcp.mode, tcp.public, tcp.token_sha256) == ("tcp", False, sha256(sni_token.encode()).hexdigest())
        daemon.stop()
        log = first_log + "".join(daemon.log)
        assert "acc-1" in log and token not in log and rotated not in log and sni_token not in log
    finally:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.stop()

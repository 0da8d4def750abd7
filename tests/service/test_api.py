"""The gRPC API against a real daemon process in the test bed."""
from __future__ import annotations

import json
import signal
import threading

import grpc
import pytest

from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, UPLINK_IP, WEB_IP, LightGuest


def test_allocate_over_grpc_and_guest_reaches_internet(bed, daemon):
    with daemon.client() as c:
        sbx = c.allocate("grpc-1", labels={"team": "a"})
        assert sbx.network.boot_ip_arg.startswith("ip=169.254.0.21::169.254.0.22:")
        assert c.allocate("grpc-1", labels={"team": "a"}) == sbx  # idempotent
        guest = LightGuest.attach(bed, sbx.network, "a")
        ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")
        assert ok and json.loads(body)["client"] == UPLINK_IP
        port = c.expose("grpc-1", 8080)
        assert port.host_port >= 20000
        assert [s.sandbox_id for s in c.list(labels={"team": "a"})] == ["grpc-1"]
        info = c.host_info()
        assert info.node_id == "test-node" and info.allocations == 1 and info.uplink == "up0"
        assert UPLINK_IP in info.uplink_addresses
        assert c.release("grpc-1") is True and c.release("grpc-1") is False


def test_every_status_code_from_a_real_bad_request(bed, tmp_path):
    cfg = write_config(bed, tmp_path, transit_cidr="10.13.0.0/30", host_port_range=[20000, 20000], pool_size=1,
                       ruleset_check_interval_s=60)
    daemon = Daemon(cfg).start()
    try:
        with daemon.client() as c:
            c.allocate("codes-1")
            c.expose("codes-1", 80)
            c.allocate("codes-2")
            cases = [
                (grpc.StatusCode.INVALID_ARGUMENT, lambda: c.allocate("Bad Id")),
                (grpc.StatusCode.INVALID_ARGUMENT, lambda: c.expose("codes-1", 70000)),
                (grpc.StatusCode.INVALID_ARGUMENT, lambda: c.expose("codes-1", 81, protocol="sctp")),
                (grpc.StatusCode.INVALID_ARGUMENT, lambda: c.list(state="zombie")),
                (grpc.StatusCode.NOT_FOUND, lambda: c.get("nobody")),
                (grpc.StatusCode.ALREADY_EXISTS, lambda: c.allocate("codes-1", labels={"x": "y"})),
                (grpc.StatusCode.ALREADY_EXISTS, lambda: c.expose("codes-2", 80, host_port=20000)),
                (grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: c.allocate("codes-3")),
                (grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: c.expose("codes-2", 81)),
                (grpc.StatusCode.INVALID_ARGUMENT, lambda: c.update_policy("codes-1", deny_out=["203.0.113.0/33"])),
                (grpc.StatusCode.FAILED_PRECONDITION, lambda: next(iter(c.watch_events(after_cursor=10**9,
                                                                                       timeout=5)))),
            ]
            for code, call in cases:
                with pytest.raises(grpc.RpcError) as exc:
                    call()
                assert exc.value.code() == code, (code, exc.value.details())
            # A kernel operation that fails is UNAVAILABLE and leaves nothing half-done.
            sh.run("nft", "delete", "table", "inet", bed.agent_prefix, ns=bed.host)
            with pytest.raises(grpc.RpcError) as exc:
                c.release("codes-2")
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value.details()
            assert c.get("codes-2").sandbox_id == "codes-2"
    finally:
        daemon.stop()



def test_watch_events_streams_and_resumes(daemon):
    with daemon.client() as c:
        seen = []
        stream = c.watch_events(after_cursor=0, timeout=30)

        def consume():
            for ev in stream:
                seen.append(ev)
                if len(seen) == 4:
                    break
        t = threading.Thread(target=consume)
        t.start()
        c.allocate("ev-1")
        c.expose("ev-1", 8080)
        c.update_policy("ev-1", internet=False)
        c.release("ev-1")
        t.join(20)
        stream.cancel()
        types = [ev.type for ev in seen]
        from netagent.api import netagent_pb2 as pb
        assert types == [pb.EVENT_TYPE_ALLOCATED, pb.EVENT_TYPE_PORT_EXPOSED, pb.EVENT_TYPE_POLICY_UPDATED,
                         pb.EVENT_TYPE_RELEASED]
        assert seen[2].sandbox.policy.internet is False
        resumed = next(iter(c.watch_events(after_cursor=seen[1].cursor, timeout=10)))
        assert resumed.cursor == seen[2].cursor


def test_health_serving_and_reflection_lists_the_service(daemon):
    with daemon.client() as c:
        assert c.health() == "SERVING"
        assert c.health("netagent.v1.NetAgent") == "SERVING"
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        stub = reflection_pb2_grpc.ServerReflectionStub(c.channel)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"netagent.v1.NetAgent", "grpc.health.v1.Health"} <= names


def test_deadline_is_honoured_by_the_server(bed, daemon):
    """ProbePort on a sandbox with no guest waits out its probe timeout (2 s).
    With a 0.5 s deadline the server must answer DEADLINE_EXCEEDED at the
    deadline. The client channel sends the deadline but does not enforce it
    (grpc.enable_deadline_checking=0), so that answer can only come from the
    server; its own message and error metric say so too."""
    import time

    from netagent.api import netagent_pb2 as pb
    from netagent.api import netagent_pb2_grpc as pb_grpc

    probe = pb.ProbePortRequest(sandbox_id="deadline-1", guest_port=3000, timeout_ms=2000)
    with daemon.client() as c:
        c.allocate("deadline-1")
        started = time.monotonic()   # control: with no deadline the server really takes the 2 s
        assert c.probe("deadline-1", 3000, timeout_ms=2000).outcome == "timeout"
        assert time.monotonic() - started >= 1.9
        before = daemon.metrics(bed.host)
        # An armed client deadline would expire first and say "Deadline Exceeded", proving nothing.
        channel = grpc.insecure_channel(c.target, options=[("grpc.enable_deadline_checking", 0)])
        try:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as exc:
                pb_grpc.NetAgentStub(channel).ProbePort(probe, timeout=0.5)
            took = time.monotonic() - started
        finally:
            channel.close()
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert exc.value.details().startswith("probe did not finish within the deadline"), exc.value.details()
        assert 0.45 <= took < 1.0, took   # at the deadline, not at the end of the 2 s probe
        errors = 'netagent_errors_total{"code": "DEADLINE_EXCEEDED", "operation": "probe"}'
        assert daemon.metrics(bed.host)[errors] == before.get(errors, 0) + 1
        assert c.get("deadline-1").sandbox_id == "deadline-1"  # the agent carries on


def _events(client, after: int, count: int, sandbox_ids: list[str]) -> list:
    """The next `count` events after `after` (fails on a stream that ends or stalls first)."""
    stream = client.watch_events(after_cursor=after, sandbox_ids=sandbox_ids, timeout=10)
    try:
        return [next(stream) for _ in range(count)]
    finally:
        stream.cancel()


def test_watch_events_cursors_survive_an_agent_crash_and_restart(bed, tmp_path):
    """docs/api.md: events are written with the change, so a cursor taken
    before a kill -9 resumes after the restart with nothing lost or renumbered,
    and new events continue the numbering."""
    from netagent.api import netagent_pb2 as pb
    cfg = write_config(bed, tmp_path, pool_size=2)
    ids = ["cur-1", "cur-2"]
    daemon = Daemon(cfg).start()
    try:
        with daemon.client() as c:
            c.allocate("cur-1")
            c.expose("cur-1", 8080)
            c.update_policy("cur-1", internet=False)
            c.allocate("cur-2")
            before = _events(c, 0, 4, ids)
        assert [e.type for e in before] == [pb.EVENT_TYPE_ALLOCATED, pb.EVENT_TYPE_PORT_EXPOSED,
                                            pb.EVENT_TYPE_POLICY_UPDATED, pb.EVENT_TYPE_ALLOCATED]
        daemon.stop(signal.SIGKILL)
        daemon = Daemon(cfg).start()
        with daemon.client() as c:
            c.release("cur-2")
            resumed = _events(c, before[1].cursor, 3, ids)
        # The same events under the same cursors, then the new one right after them.
        assert [(e.cursor, e.type, e.sandbox_id) for e in resumed[:2]] == \
            [(e.cursor, e.type, e.sandbox_id) for e in before[2:]]
        assert resumed[2].type == pb.EVENT_TYPE_RELEASED and resumed[2].sandbox_id == "cur-2"
        assert resumed[2].cursor > before[3].cursor
        assert resumed[0].sandbox.policy.internet is False
    finally:
        daemon.stop()


def test_a_consumer_too_slow_for_live_events_is_dropped_with_failed_precondition_and_resumes(bed, tmp_path):
    """docs/api.md: a WatchEvents consumer that falls 10,000 events behind live
    is dropped with FAILED_PRECONDITION and resumes from its last cursor."""
    from netagent.api import netagent_pb2 as pb
    from netagent.api import netagent_pb2_grpc as pb_grpc
    from netagent.events import QUEUE_LIMIT
    sandboxes, extra = 50, 500
    daemon = Daemon(write_config(bed, tmp_path, pool_size=sandboxes, ruleset_check_interval_s=60)).start()
    # A consumer that stops reading: no automatic window growth, a small window, so
    # HTTP/2 flow control holds the agent's stream back after a few dozen events.
    channel = grpc.insecure_channel(f"unix://{tmp_path / 'api.sock'}",
                                    options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)])
    try:
        with daemon.client() as c:
            for k in range(sandboxes):
                c.allocate(f"slow-{k}")
            stream = pb_grpc.NetAgentStub(channel).WatchEvents(pb.WatchEventsRequest(after_cursor=0), timeout=90)
            got = [next(stream)]   # the stream is open; from here this consumer reads nothing
            # The limit and then some in POLICY_UPDATED events (an unchanged policy: no nft, no
            # conntrack walk, so they come fast), 200 calls in flight over 50 sandboxes.
            in_flight = []
            for k in range(QUEUE_LIMIT + extra):
                in_flight.append(c.stub.UpdatePolicy.future(
                    pb_policy_request(f"slow-{k % sandboxes}", internet=True), timeout=60))
                if len(in_flight) == 200:
                    [f.result() for f in in_flight]
                    in_flight.clear()
            [f.result() for f in in_flight]
            with pytest.raises(grpc.RpcError) as exc:
                for ev in stream:
                    got.append(ev)
            assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.value.details()
            assert "too slow" in exc.value.details()
            cursors = [e.cursor for e in got]
            assert cursors == list(range(1, len(cursors) + 1))   # nothing skipped before the drop
            assert len(cursors) < extra   # it fell the whole queue behind
            # It resumes from its last cursor with the very next event, and catches up.
            resumed = c.watch_events(after_cursor=cursors[-1], timeout=30)
            tail = [next(resumed).cursor for _ in range(sandboxes + QUEUE_LIMIT + extra - len(cursors))]
            resumed.cancel()
            assert tail == list(range(cursors[-1] + 1, sandboxes + QUEUE_LIMIT + extra + 1))
    finally:
        channel.close()
        daemon.stop()


def pb_policy_request(sandbox_id: str, internet: bool):
    from netagent.api import netagent_pb2 as pb
    return pb.UpdatePolicyRequest(sandbox_id=sandbox_id, policy=pb.EgressPolicy(internet=internet))


def test_concurrent_policy_updates_of_one_sandbox_all_succeed_and_the_kernel_matches_the_last(bed, daemon):
    """Many UpdatePolicy calls on one sandbox in flight at once (they land in
    one burst) all succeed, do not fail the other calls of the burst, and
    leave the kernel with exactly the elements of the policy that was stored."""
    from netagent.api import netagent_pb2 as pb
    from tests.datapath.helpers import sandbox_elements
    open_deny = pb.EgressPolicy(internet=True, deny_out=["192.0.2.0/25"])
    closed_allow = pb.EgressPolicy(internet=False, allow_out=["203.0.113.0/24", "198.51.100.7:443"])
    with daemon.client() as c:
        ip = c.allocate("pol-1").network.sandbox_ip
        updates = [c.stub.UpdatePolicy.future(pb.UpdatePolicyRequest(
            sandbox_id="pol-1", policy=open_deny if k % 2 else closed_allow), timeout=30) for k in range(200)]
        others = [c.stub.Allocate.future(pb.AllocateRequest(sandbox_id=f"pol-other-{k}"), timeout=30)
                  for k in range(3)]
        errors = []
        for f in updates + others:
            try:
                f.result()
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()[:200]}")
        assert errors == []
        final = c.get("pol-1").policy
        assert final in (open_deny, closed_allow)
    got = {name: len(elems) for name, elems in sandbox_elements(bed.host, bed.agent_prefix, ip).items()}
    if final == open_deny:
        assert got == {"egress_open": 1, "egress_blocked": 0, "allow_net": 0, "allow_port": 0, "deny_net": 1,
                       "deny_port": 0}
    else:
        assert got == {"egress_open": 0, "egress_blocked": 1, "allow_net": 1, "allow_port": 2, "deny_net": 0,
                       "deny_port": 0}

"""Usage accounting over the real daemon: GetUsage, Prometheus (aggregate and,
behind the switch, per sandbox), USAGE_FINAL in WatchEvents, bad requests."""
from __future__ import annotations

import json
import time

import grpc
import pytest

from netagent.api import netagent_pb2 as pb
from netagent.operator.usage_view import human_bytes
from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import WEB_IP, LightGuest, wait_until

ECHO_PORT = 9999


def test_get_usage_metrics_and_usage_final_event_over_grpc(bed, tmp_path):
    bed.start_module(bed.inet, "tests.testbed.udp_traffic", "echo", str(ECHO_PORT), WEB_IP)
    daemon = Daemon(write_config(bed, tmp_path, metrics_per_sandbox=True)).start()
    guest = None
    try:
        with daemon.client() as c:
            sbx = c.allocate("use-1")
            c.allocate("use-2")
            guest = LightGuest.attach(bed, sbx.network, "a")
            out = json.loads(sh.run(sh.PYTHON, "-m", "tests.testbed.udp_traffic", "send", WEB_IP, str(ECHO_PORT),
                                    "4", "1000", ns=guest.name).stdout)
            sent = pb.UsageCounter(packets=4, bytes=sum(n + 28 for n in out["sent"]))
            [usage] = c.usage("use-1")
            assert usage.sandbox_id == "use-1" and usage.egress.sent == sent and usage.egress.received == sent
            assert usage.ingress == pb.UsagePath(sent=pb.UsageCounter(), received=pb.UsageCounter())
            assert [u.sandbox_id for u in c.usage()] == ["use-1", "use-2"]
            assert c.usage("use-2")[0].egress.sent.bytes == 0

            agg = 'netagent_usage_bytes_total{"direction": "sent", "path": "egress"}'
            per = 'netagent_sandbox_usage_bytes_total{"direction": "sent", "path": "egress", "sandbox_id": "use-1"}'
            assert wait_until(lambda: daemon.metrics(bed.host).get(agg) == sent.bytes, timeout=10)
            assert daemon.metrics(bed.host)[per] == sent.bytes

            # the operator CLI shows the same counts
            ls = json.loads(_cli(daemon, "ls", "--json"))
            assert {s["sandboxId"]: int(s["usage"]["egress"]["sent"]["bytes"]) for s in ls} == \
                {"use-1": sent.bytes, "use-2": 0}
            shown = json.loads(_cli(daemon, "show", "use-1", "--json"))
            assert int(shown["usage"]["egress"]["received"]["packets"]) == 4
            assert f"egress: sent {human_bytes(sent.bytes)} (4 pkts)" in _cli(daemon, "show", "use-1")
            assert "SENT" in _cli(daemon, "ls")

            with pytest.raises(grpc.RpcError) as err:
                c.usage("nobody")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as err:
                c.usage("bad id!")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            cursor = max(ev.cursor for ev in _events(c, 0, lambda ev: ev.type == pb.EVENT_TYPE_ALLOCATED, 2))
            assert c.release("use-1") is True
            [final] = _events(c, cursor, lambda ev: ev.type == pb.EVENT_TYPE_USAGE_FINAL, 1)
            assert final.sandbox_id == "use-1" and final.usage.egress.sent == sent
            assert final.usage.egress.received == sent
            # a release keeps the aggregate (the final count stays in it) and drops the sandbox's series
            assert wait_until(lambda: (m := daemon.metrics(bed.host)).get(agg) == sent.bytes and per not in m,
                              timeout=10)
    finally:
        if guest is not None:
            guest.stop()
        daemon.stop()


def test_last_reading_answers_from_the_meter_without_reading_the_kernel(bed, tmp_path):
    """GetUsage(last_reading) and `ls`: the counts of the last reading, however
    much was sent since (no periodic reading here: usage_interval_s is 60 s)."""
    bed.start_module(bed.inet, "tests.testbed.udp_traffic", "echo", str(ECHO_PORT), WEB_IP)
    daemon = Daemon(write_config(bed, tmp_path, usage_interval_s=60)).start()
    guest = None
    try:
        with daemon.client() as c:
            allocated_ms = time.time() * 1e3
            guest = LightGuest.attach(bed, c.allocate("last-1").network, "a")

            def send() -> int:
                out = json.loads(sh.run(sh.PYTHON, "-m", "tests.testbed.udp_traffic", "send", WEB_IP,
                                        str(ECHO_PORT), "4", "1000", ns=guest.name).stdout)
                return sum(n + 28 for n in out["sent"])

            def last(sandbox_id: str = "") -> pb.GetUsageResponse:
                return c.stub.GetUsage(pb.GetUsageRequest(sandbox_id=sandbox_id, last_reading=True), timeout=10)

            first = send()
            before = last()
            # the last reading is the start-up one (before its resync), from before last-1 existed
            assert list(before.usage) == [] and 0 < before.read_unix_ms <= allocated_ms
            [fresh] = c.usage("last-1")                                     # reads the kernel now
            assert fresh.egress.sent.bytes == first
            read = last()
            assert [u.egress.sent.bytes for u in read.usage] == [first] and read.read_unix_ms > 0
            second = send()
            assert last("last-1") == read                                   # the kernel was not read again
            ls = json.loads(_cli(daemon, "ls", "--json"))
            assert [int(s["usage"]["egress"]["sent"]["bytes"]) for s in ls] == [first]
            assert [u.egress.sent.bytes for u in c.usage()] == [first + second]
            assert [u.egress.sent.bytes for u in last().usage] == [first + second]
            with pytest.raises(grpc.RpcError) as err:
                last("nobody")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        if guest is not None:
            guest.stop()
        daemon.stop()


def _cli(daemon, *args: str) -> str:
    return sh.run(sh.PYTHON, "-m", "netagent", *args, "--config", str(daemon.config)).stdout


def _events(c, after: int, keep, count: int) -> list:
    found = []
    for ev in c.watch_events(after_cursor=after, timeout=10):
        if keep(ev):
            found.append(ev)
            if len(found) == count:
                return found
    return found

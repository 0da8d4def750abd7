"""Flow records over the real daemon: ListFlows, `netagent flows`, the
JSON-lines log, and bad requests."""
from __future__ import annotations

import json

import grpc
import pytest

from netagent.api import netagent_pb2 as pb
from tests.datapath.test_flow_record import quick_ends
from tests.service.daemon import Daemon, write_config
from tests.testbed.bed import HTTP_PORT, WEB_IP, LightGuest, wait_until


def test_list_flows_and_the_flows_command(bed, tmp_path):
    quick_ends(bed)
    daemon = Daemon(write_config(bed, tmp_path, flows={"snapshot_interval_s": 0.5})).start()
    guest = None
    try:
        with daemon.client() as c:
            guest = LightGuest.attach(bed, c.allocate("flw-1").network, "a")
            for _ in range(2):
                ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")
                assert ok, body

            def http_flows() -> list[pb.FlowRecord]:
                return [f for f in c.flows("flw-1").flows if f.destination == WEB_IP]
            assert wait_until(lambda: len(http_flows()) == 2, timeout=60), list(c.flows("flw-1").flows)
            first, second = http_flows()
            assert (first.sandbox_id, first.direction, first.protocol, first.destination_port, first.end_reason) == (
                "flw-1", "egress", "tcp", HTTP_PORT, "closed")
            assert first.bytes_received > first.bytes_sent > 0 and first.end_unix_ms <= second.end_unix_ms
            assert 0 < first.start_unix_ms <= first.end_unix_ms

            everything = c.flows("flw-1")
            limited = c.flows("flw-1", limit=1)
            assert len(limited.flows) == 1 and limited.truncated and not everything.truncated
            assert list(c.flows("flw-1", since_unix_ms=second.end_unix_ms).flows)[-1] == second
            assert first not in c.flows("flw-1", since_unix_ms=first.end_unix_ms + 1).flows
            assert list(c.flows("flw-1", until_unix_ms=first.start_unix_ms - 1).flows) == []
            assert list(c.flows("nobody-yet").flows) == []      # records outlive sandboxes: no NOT_FOUND
            for bad in (dict(sandbox_id="bad id!"), dict(sandbox_id="flw-1", since_unix_ms=2, until_unix_ms=1),
                        dict(sandbox_id="flw-1", limit=10_001)):
                with pytest.raises(grpc.RpcError) as err:
                    c.stub.ListFlows(pb.ListFlowsRequest(**bad), timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad

            shown = json.loads(daemon.cli("flows", "flw-1", "--json").stdout)
            assert [f["destination"] for f in shown["flows"]] == [f.destination for f in everything.flows]
            assert shown["truncated"] is False
            human = daemon.cli("flows", "flw-1", "--since", "1h").stdout
            assert f"{WEB_IP}:{HTTP_PORT}" in human and "closed" in human
            assert "(none)" in daemon.cli("flows", "flw-1", "--until", str(first.start_unix_ms / 1000 - 1)).stdout
            res = daemon.cli("flows", "flw-1", "--since", "yesterday-ish", check=False)
            assert res.returncode == 2 and "not a time" in res.stderr

            scraped = daemon.metrics(bed.host)
            assert scraped["netagent_flow_records_total"] >= 2 and scraped["netagent_flow_event_overflows_total"] == 0

            log = tmp_path / "state" / "flows.jsonl"
            lines = [json.loads(line) for line in log.read_text().splitlines()]
            assert [x["destination"] for x in lines if x["sandbox_id"] == "flw-1" and x["destination"] == WEB_IP] == [
                WEB_IP, WEB_IP]
    finally:
        if guest is not None:
            guest.stop()
        daemon.stop()


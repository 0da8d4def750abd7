"""Flow records over the real daemon: ListFlows, `netagent flows`, the
JSON-lines log, and bad requests."""
from __future__ import annotations

import json
import signal
import subprocess

import grpc
import pytest

from netagent.api import netagent_pb2 as pb
from tests.datapath.test_flow_record import HOLD, echo_entries, quick_ends
from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import ECHO_PORT, HTTP_PORT, WEB_IP, LightGuest, wait_until


def test_list_flows_and_the_flows_command(bed, tmp_path):
    quick_ends(bed)
    daemon = Daemon(write_config(bed, tmp_path, flows={"reap_interval_s": 0.5})).start()
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
            # the answer (headers and body) came back inside the flow; the request went out in it
            assert first.bytes_received > len(body) > 0 and first.bytes_sent > 40 * first.packets_sent > 0
            assert first.end_unix_ms <= second.end_unix_ms
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
            assert scraped["netagent_flow_records_total{}"] >= 2
            assert scraped["netagent_flow_event_overflows_total{}"] == 0

            log = tmp_path / "state" / "flows.jsonl"
            lines = [json.loads(line) for line in log.read_text().splitlines()]
            assert [x["destination"] for x in lines if x["sandbox_id"] == "flw-1" and x["destination"] == WEB_IP] == [
                WEB_IP, WEB_IP]
    finally:
        if guest is not None:
            guest.stop()
        daemon.stop()



def test_a_connection_that_ends_after_a_kill_9_is_recorded_at_the_next_start_with_its_bytes(bed, tmp_path):
    """No stop ran: the flow is in the live set from its new event, its counters
    from the last periodic reading ([flows] counters_interval_s); the next start
    finds it gone and records it with those counters (a lower bound)."""
    quick_ends(bed)
    config = write_config(bed, tmp_path, flows={"reap_interval_s": 0.5, "counters_interval_s": 0.5})
    daemon = Daemon(config).start()
    guest = holder = None
    try:
        with daemon.client() as c:
            guest = LightGuest.attach(bed, c.allocate("flw-k").network, "k")
        holder = subprocess.Popen(["ip", "netns", "exec", guest.name, sh.PYTHON, "-c", HOLD, WEB_IP, str(ECHO_PORT)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "open\n"
        saved = tmp_path / "state" / "flows.db"
        # the 1,000 bytes each way were counted, then a reading saved them
        assert wait_until(lambda: _saved_live(saved, WEB_IP, more_than=1000), timeout=30), (
            "the open flow is not in the saved live set with its bytes")
        daemon.stop(signal.SIGKILL)
        holder.stdin.close()
        holder.wait(10)
        assert wait_until(lambda: not echo_entries(bed), timeout=60), "the connection's entry did not go"

        daemon = Daemon(config).start()
        with daemon.client() as c:
            assert wait_until(lambda: any(f.destination_port == ECHO_PORT for f in c.flows("flw-k").flows),
                              timeout=60), list(c.flows("flw-k").flows)
            [rec] = [f for f in c.flows("flw-k").flows if f.destination_port == ECHO_PORT]
            # no stop read its counters: the last reading's, with while_down saying they are a lower bound
            assert rec.while_down and rec.destination == WEB_IP and rec.end_reason == "unknown"
            assert rec.bytes_sent > 1000 and rec.bytes_received > 1000 and rec.packets_sent >= 2
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        if guest is not None:
            guest.stop()
        daemon.stop()


def _saved_live(db, destination: str, more_than: int = -1) -> bool:
    """The destination's flow is in the saved live set, with more than `more_than` bytes each way."""
    import sqlite3
    if not db.exists():
        return False
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return any(d == destination and min(sent, received) > more_than for d, sent, received in
                   conn.execute("SELECT destination, bytes_sent, bytes_received FROM live"))
    finally:
        conn.close()

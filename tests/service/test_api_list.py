"""List builds its answer straight from the inventory records (no pydantic
Network per sandbox): it must say exactly what Get says of each sandbox."""
from __future__ import annotations

import time

import pytest

from netagent.api import netagent_pb2 as pb
from tests.service.daemon import Daemon, write_config


@pytest.fixture
def unprobed_daemon(bed, tmp_path):
    """An exposed TCP port is probed for 0.5 s, then once a minute: its
    reachability is set, and stays put between List and Get."""
    d = Daemon(write_config(bed, tmp_path, pool_size=6, registry_url="", probe_interval_s=60,
                            probe_fast_interval_s=0.1, probe_fast_period_s=0.5, probe_timeout_s=0.1)).start()
    try:
        yield d
    finally:
        d.stop()


def test_list_answers_what_get_answers_for_every_sandbox(unprobed_daemon):
    with unprobed_daemon.client(timeout=30) as c:
        c.allocate("ls-plain")
        c.allocate("ls-off", internet=False, labels={"team": "a", "tier": "db"},
                   allow_out=["203.0.113.0/24", "192.0.2.20/32"], deny_out=["203.0.113.7/32"])
        c.allocate("ls-ports", labels={"team": "a"})
        c.expose("ls-ports", 8080)
        c.expose("ls-ports", 5353, "udp")
        c.expose("ls-ports", 22)
        c.allocate("ls-limited")
        c.set_limits("ls-limited", egress_bps=8_000_000, ingress_bps=16_000_000, ingress_pps=5_000)
        c.stub.Allocate(pb.AllocateRequest(sandbox_id="ls-pps", limits=pb.Limits(egress_pps=1_000, burst_packets=20)),
                        timeout=30)
        c.release("ls-plain")   # a freed slot: List must skip it
        c.allocate("ls-again")
        deadline = time.monotonic() + 10    # the fast probes' result: what port_view adds
        while not all(p.HasField("reachable") for p in c.get("ls-ports").ports if p.protocol == pb.PROTOCOL_TCP):
            assert time.monotonic() < deadline, "the exposed TCP ports were never probed"
            time.sleep(0.1)
        time.sleep(1)   # past the fast period

        listed = c.list()
        assert [s.sandbox_id for s in listed] == sorted((s.sandbox_id for s in listed),
                                                        key=lambda sid: c.get(sid).network.slot)
        assert sorted(s.sandbox_id for s in listed) == ["ls-again", "ls-limited", "ls-off", "ls-ports", "ls-pps"]
        for sbx in listed:
            assert sbx == c.get(sbx.sandbox_id), sbx.sandbox_id
        by_id = {s.sandbox_id: s for s in listed}
        assert [p.guest_port for p in by_id["ls-ports"].ports] == [22, 8080, 5353]   # TCP first, by port
        assert by_id["ls-ports"].ports[1].HasField("reachable") and by_id["ls-ports"].ports[1].checked_unix_ms
        assert (by_id["ls-limited"].limits.egress_bps, by_id["ls-limited"].limits.ingress_pps) == (8_000_000, 5_000)
        assert (by_id["ls-pps"].limits.egress_pps, by_id["ls-pps"].limits.burst_packets) == (1_000, 20)
        assert by_id["ls-off"].policy.HasField("internet") and not by_id["ls-off"].policy.internet

        assert [s.sandbox_id for s in c.list(labels={"team": "a"})] == [
            s.sandbox_id for s in listed if s.sandbox_id in ("ls-off", "ls-ports")]
        assert [s.sandbox_id for s in c.list(labels={"team": "a", "tier": "db"})] == ["ls-off"]
        assert c.list(labels={"team": "b"}) == []

"""Packet-rate limits over gRPC against a real daemon: Allocate and SetLimits
carry them to the slot's netagent_pps table and back in Sandbox.limits; bad
ones are INVALID_ARGUMENT with nothing changed. (netagent.client has no
packet-rate arguments yet: the stub is called directly.)"""
from __future__ import annotations

import grpc
import pytest

from netagent.api import netagent_pb2 as pb
from tests.testbed import sh


def pps_rules(netns: str) -> list[str]:
    res = sh.run("nft", "list", "table", "ip", "netagent_pps", ns=netns, check=False)
    return [line.strip() for line in res.stdout.splitlines() if "limit rate" in line] if res.returncode == 0 else []


def test_packet_rates_over_grpc_reach_the_slot_and_bad_ones_change_nothing(daemon):
    with daemon.client() as c:
        req = pb.AllocateRequest(sandbox_id="pps-grpc", limits=pb.Limits(egress_pps=1_000, burst_packets=20))
        sbx = c.stub.Allocate(req, timeout=c.timeout).sandbox
        assert (sbx.limits.egress_pps, sbx.limits.ingress_pps, sbx.limits.burst_packets) == (1_000, 0, 20)
        netns = sbx.network.netns
        assert pps_rules(netns) == ['iifname "tap0" limit rate over 1000/second burst 20 packets '
                                    'counter name "egress_dropped" drop']

        set_req = pb.SetLimitsRequest(sandbox_id="pps-grpc", limits=pb.Limits(ingress_pps=500))
        assert c.stub.SetLimits(set_req, timeout=c.timeout).limits.ingress_pps == 500
        assert pps_rules(netns) == ['oifname "tap0" limit rate over 500/second burst 50 packets '
                                    'counter name "ingress_dropped" drop']

        for bad in (pb.Limits(ingress_pps=9), pb.Limits(egress_pps=10**9), pb.Limits(ingress_pps=100,
                                                                                    burst_packets=10**8)):
            with pytest.raises(grpc.RpcError) as exc:
                c.stub.SetLimits(pb.SetLimitsRequest(sandbox_id="pps-grpc", limits=bad), timeout=c.timeout)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.RpcError) as exc:
                c.stub.Allocate(pb.AllocateRequest(sandbox_id="pps-bad", limits=bad), timeout=c.timeout)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert c.get("pps-grpc").limits.ingress_pps == 500 and len(pps_rules(netns)) == 1
        assert [s.sandbox_id for s in c.list()] == ["pps-grpc"]

        c.stub.SetLimits(pb.SetLimitsRequest(sandbox_id="pps-grpc", limits=pb.Limits()), timeout=c.timeout)
        assert pps_rules(netns) == [] and c.get("pps-grpc").limits == pb.Limits()

"""Hand-written protobuf-to-dict for the messages `status`, `ls` and `show`
print: the same dicts as MessageToDict(always_print_fields_with_no_presence=True)
(camelCase keys, 64-bit integers as strings, enums by name, unset message and
`optional` fields left out), at a fraction of its cost for 2,000 sandboxes and
without importing json_format (issue 18). tests/unit/test_proto_dict.py
compares every field with MessageToDict, so a field added to the proto and not
here fails it.
"""
from __future__ import annotations

import math
from typing import Any

from ..api import netagent_pb2 as pb

_PROTOCOL_NAMES = {v.number: v.name for v in pb.Protocol.DESCRIPTOR.values}


def _double(v: float) -> float | str:
    if math.isnan(v):
        return "NaN"
    return ("Infinity" if v > 0 else "-Infinity") if math.isinf(v) else v


def network(m: Any) -> dict[str, Any]:
    return {"netns": m.netns, "netnsPath": m.netns_path, "tap": m.tap, "guestIp": m.guest_ip,
            "guestPrefixlen": m.guest_prefixlen, "guestNetmask": m.guest_netmask, "gatewayIp": m.gateway_ip,
            "guestMac": m.guest_mac, "mtu": m.mtu, "sandboxIp": m.sandbox_ip, "hostVeth": m.host_veth,
            "bootIpArg": m.boot_ip_arg, "slot": m.slot}


def egress_policy(m: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"internet": m.internet} if m.HasField("internet") else {}
    d["allowOut"], d["denyOut"] = list(m.allow_out), list(m.deny_out)
    return d


def exposed_port(m: Any) -> dict[str, Any]:
    d = {"guestPort": m.guest_port, "protocol": _PROTOCOL_NAMES.get(m.protocol, m.protocol), "hostPort": m.host_port}
    if m.HasField("reachable"):
        d["reachable"] = m.reachable
    d["changedUnixMs"], d["checkedUnixMs"] = str(m.changed_unix_ms), str(m.checked_unix_ms)
    return d


def limits(m: Any) -> dict[str, Any]:
    return {"egressBps": str(m.egress_bps), "ingressBps": str(m.ingress_bps), "burstBytes": str(m.burst_bytes),
            "egressPps": str(m.egress_pps), "ingressPps": str(m.ingress_pps), "burstPackets": str(m.burst_packets)}


def sandbox(m: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"sandboxId": m.sandbox_id}
    if m.HasField("network"):
        d["network"] = network(m.network)
    if m.HasField("policy"):
        d["policy"] = egress_policy(m.policy)
    d["labels"] = dict(m.labels)
    d["ports"] = [exposed_port(p) for p in m.ports]
    d["state"], d["createdUnixMs"], d["egressAddress"] = m.state, str(m.created_unix_ms), m.egress_address
    if m.HasField("limits"):
        d["limits"] = limits(m.limits)
    return d


def usage_counter(m: Any) -> dict[str, Any]:
    return {"packets": str(m.packets), "bytes": str(m.bytes)}


def usage_path(m: Any) -> dict[str, Any]:
    d = {}
    if m.HasField("sent"):
        d["sent"] = usage_counter(m.sent)
    if m.HasField("received"):
        d["received"] = usage_counter(m.received)
    return d


def sandbox_usage(m: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"sandboxId": m.sandbox_id}
    for name in ("egress", "ingress", "host"):
        if m.HasField(name):
            d[name] = usage_path(getattr(m, name))
    return d


def host_info(m: Any) -> dict[str, Any]:
    return {"nodeId": m.node_id, "version": m.version, "capacity": m.capacity, "allocations": m.allocations,
            "freeSlots": m.free_slots, "readySlots": m.ready_slots, "uplink": m.uplink,
            "uplinkAddresses": list(m.uplink_addresses), "transitCidr": m.transit_cidr, "prefix": m.prefix,
            "registry": m.registry, "registryHealthy": m.registry_healthy, "registryError": m.registry_error,
            "registryLastSuccessUnixMs": str(m.registry_last_success_unix_ms), "probedPorts": m.probed_ports,
            "nodeAddress": m.node_address, "hostNetns": m.host_netns, "hostPortLow": m.host_port_low,
            "hostPortHigh": m.host_port_high, "probeIntervalS": _double(m.probe_interval_s),
            "probeTimeoutS": _double(m.probe_timeout_s), "stateDir": m.state_dir}


# By message type: what commands.to_dict converts by hand (the rest go through MessageToDict).
CONVERTERS = {pb.Sandbox: sandbox, pb.Network: network, pb.EgressPolicy: egress_policy,
              pb.ExposedPort: exposed_port, pb.Limits: limits, pb.SandboxUsage: sandbox_usage,
              pb.UsagePath: usage_path, pb.UsageCounter: usage_counter, pb.HostInfo: host_info}

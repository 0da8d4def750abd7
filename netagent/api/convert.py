"""Proto <-> core. The API boundary: each request becomes a typed, validated
operation (core/ops.py) before anything runs; replies become proto messages."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..core import ops
from ..errors import InvalidArgument
from ..models import EgressPolicy, ExposedPort, Limits, Network, Protocol, validate_sandbox_id
from ..netns import path_of as netns_path_of
from . import netagent_pb2 as pb

SandboxId = Annotated[str, AfterValidator(validate_sandbox_id)]

PROTO_TO_PROTOCOL = {pb.PROTOCOL_UNSPECIFIED: Protocol.TCP, pb.PROTOCOL_TCP: Protocol.TCP,
                     pb.PROTOCOL_UDP: Protocol.UDP}
PROTOCOL_TO_PROTO = {Protocol.TCP: pb.PROTOCOL_TCP, Protocol.UDP: pb.PROTOCOL_UDP}
EVENT_TYPES = {"allocated": pb.EVENT_TYPE_ALLOCATED, "released": pb.EVENT_TYPE_RELEASED,
               "policy_updated": pb.EVENT_TYPE_POLICY_UPDATED, "port_exposed": pb.EVENT_TYPE_PORT_EXPOSED,
               "port_unexposed": pb.EVENT_TYPE_PORT_UNEXPOSED, "port_reachability": pb.EVENT_TYPE_PORT_REACHABILITY,
               "flow_denied": pb.EVENT_TYPE_FLOW_DENIED, "slot_repaired": pb.EVENT_TYPE_SLOT_REPAIRED,
               "tap_lost": pb.EVENT_TYPE_TAP_LOST, "slot_quarantined": pb.EVENT_TYPE_SLOT_QUARANTINED,
               "first_payload_verdicts": pb.EVENT_TYPE_FIRST_PAYLOAD_VERDICTS,
               "usage_final": pb.EVENT_TYPE_USAGE_FINAL, "http_request": pb.EVENT_TYPE_HTTP_REQUEST}


def usage_to_proto(sandbox_id: str, usage: dict[str, dict[str, int]]) -> pb.SandboxUsage:
    """A ledger total (usage/ledger.py Counts.as_dict(): "egress_sent" -> packets, bytes)."""
    # nested dicts, one constructor: 40% faster than a message per counter
    # (2,000 sandboxes per `netagent ls`; docs/history/performance-log.md, "CLI start-up")
    return pb.SandboxUsage(
        sandbox_id=sandbox_id,
        egress={"sent": usage["egress_sent"], "received": usage["egress_received"]},
        ingress={"sent": usage["ingress_sent"], "received": usage["ingress_received"]},
        host={"sent": usage["host_sent"], "received": usage["host_received"]})


def allocate_op(r: pb.AllocateRequest, egress_addresses: Sequence[IPv4Address] = (),
                egress_by_label: Mapping[str, IPv4Address] | None = None) -> ops.Allocate:
    spec: dict[str, Any] = {"policy": policy_from_proto(r.policy), "labels": dict(r.labels)}
    if r.egress_address:
        spec["egress_address"] = r.egress_address
    if r.HasField("limits"):
        spec["limits"] = limits_from_proto(r.limits)
    return ops.Allocate.of(r.sandbox_id, spec, egress_addresses, egress_by_label)


def limits_from_proto(m: pb.Limits) -> dict[str, int | None]:
    return {"egress_bps": m.egress_bps or None, "ingress_bps": m.ingress_bps or None,
            "burst_bytes": m.burst_bytes or None, "egress_pps": m.egress_pps or None,
            "ingress_pps": m.ingress_pps or None, "burst_packets": m.burst_packets or None}


def limits_to_proto(limits: Limits) -> pb.Limits:
    return pb.Limits(**{name: getattr(limits, name) or 0 for name in Limits.model_fields})


def set_limits_op(r: pb.SetLimitsRequest) -> ops.SetLimits:
    return ops.SetLimits.of(r.sandbox_id, limits_from_proto(r.limits))


def set_egress_op(r: pb.SetEgressAddressRequest, egress_addresses: Sequence[IPv4Address]) -> ops.SetEgressAddress:
    return ops.SetEgressAddress.of(r.sandbox_id, r.egress_address or None, egress_addresses)


def release_op(r: pb.ReleaseRequest) -> ops.Release:
    return ops.Release.of(r.sandbox_id)


def update_policy_op(r: pb.UpdatePolicyRequest) -> ops.UpdatePolicy:
    return ops.UpdatePolicy.of(r.sandbox_id, policy_from_proto(r.policy))


def expose_op(r: pb.ExposePortRequest, host_port_range: tuple[int, int]) -> ops.Expose:
    return ops.Expose.of(r.sandbox_id, r.guest_port, protocol_from_proto(r.protocol), r.host_port or None,
                         host_port_range)


def port_access_op(r: pb.ExposePortRequest) -> ops.SetPortAccess | None:
    """The access fields an ExposePort request sets (None: it sets none)."""
    fields = {f: getattr(r, f) for f in ("public", "access_token", "host_mask", "mode") if r.HasField(f)}
    return ops.SetPortAccess.of(r.sandbox_id, r.guest_port, **fields) if fields else None


def unexpose_op(r: pb.UnexposePortRequest) -> ops.Unexpose:
    return ops.Unexpose.of(r.sandbox_id, r.guest_port, protocol_from_proto(r.protocol))


def sandbox_id(value: str) -> str:
    return validate_sandbox_id(value)


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListReq(_Req):
    labels: dict[str, str]
    state: str = ""


class WatchReq(_Req):
    after_cursor: int
    sandbox_ids: tuple[SandboxId, ...] = ()


FLOWS_LIMIT_DEFAULT, FLOWS_LIMIT_MAX = 1000, 10_000


class ListFlowsReq(_Req):
    sandbox_id: SandboxId
    since_unix_ms: int = Field(0, ge=0)
    until_unix_ms: int = Field(0, ge=0)     # 0: now
    limit: int = Field(0, ge=0, le=FLOWS_LIMIT_MAX)

    @model_validator(mode="after")
    def _range(self) -> ListFlowsReq:
        if self.until_unix_ms and self.since_unix_ms > self.until_unix_ms:
            raise ValueError("since_unix_ms is after until_unix_ms")
        return self


def flow_to_proto(r: Any) -> pb.FlowRecord:
    """A flows.records.FlowRecord."""
    return pb.FlowRecord(
        sandbox_id=r.sandbox_id, direction=r.direction, protocol=r.protocol, source=r.source,
        source_port=r.source_port, destination=r.destination, destination_port=r.destination_port, domain=r.domain,
        bytes_sent=r.bytes_sent, bytes_received=r.bytes_received, packets_sent=r.packets_sent,
        packets_received=r.packets_received, start_unix_ms=int(r.start * 1000), end_unix_ms=int(r.end * 1000),
        end_reason=r.end_reason, while_down=r.while_down)


def parse(model: type[_Req], **data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidArgument(f"{where}: {msg}") from None


def policy_from_proto(p: pb.EgressPolicy) -> EgressPolicy:
    return EgressPolicy(internet=p.internet if p.HasField("internet") else None,
                        allow_out=tuple(p.allow_out), deny_out=tuple(p.deny_out))


def protocol_from_proto(value: int) -> Protocol:
    if value not in PROTO_TO_PROTOCOL:
        raise InvalidArgument(f"protocol: unknown value {value}")
    return PROTO_TO_PROTOCOL[value]


def port_to_proto(p: ExposedPort | dict[str, Any]) -> pb.ExposedPort:
    p = p if isinstance(p, ExposedPort) else ExposedPort.model_validate(p)
    msg = pb.ExposedPort(guest_port=p.guest_port, protocol=PROTOCOL_TO_PROTO[p.protocol], host_port=p.host_port,
                         changed_unix_ms=int(p.changed_at * 1000), checked_unix_ms=int(p.checked_at * 1000))
    if p.reachable is not None:
        msg.reachable = p.reachable
    return msg


def sandboxes_to_proto(plan: Any, guest: Any, records: Sequence[Any], port_view: Any) -> list[pb.Sandbox]:
    """List's answer straight from inventory records (core/allocation.py): what
    sandbox_to_proto(network_of(...)) gives each, without a pydantic Network
    per sandbox (~80% of List's time at 2,000 sandboxes; docs/history/performance-log.md, "CLI
    start-up").
    The host's guest facts are the same for every sandbox: computed once."""
    boot_ip_arg = plan.boot_ip_arg(dns=str(guest.gateway_ip))
    host = {"tap": guest.tap_name, "guest_ip": str(guest.guest_ip), "guest_prefixlen": guest.prefixlen,
            "guest_netmask": plan.boot_ip_arg().split(":")[3], "gateway_ip": str(guest.gateway_ip),
            "guest_mac": guest.guest_mac, "mtu": guest.mtu, "boot_ip_arg": boot_ip_arg}
    out = []
    for rec in records:
        slot = plan.slot(rec.slot)
        policy = pb.EgressPolicy(allow_out=list(rec.policy.allow_out), deny_out=list(rec.policy.deny_out),
                                 internet=bool(rec.policy.internet))
        ports = sorted(rec.ports.values(), key=lambda p: (p.protocol.value, p.guest_port))
        out.append(pb.Sandbox(
            sandbox_id=rec.sandbox_id,
            network=pb.Network(netns=slot.netns, netns_path=netns_path_of(slot.netns), sandbox_ip=str(slot.sandbox_ip),
                               host_veth=slot.host_veth, slot=rec.slot, **host),
            policy=policy, labels=rec.spec.labels, ports=[port_to_proto(port_view(rec.sandbox_id, p)) for p in ports],
            state="allocated", created_unix_ms=int(rec.created_at * 1000), egress_address=rec.egress_address or "",
            limits=limits_to_proto(rec.limits)))
    return out


def sandbox_to_proto(n: Network | dict[str, Any]) -> pb.Sandbox:
    n = n if isinstance(n, Network) else Network.model_validate(n)
    policy = pb.EgressPolicy(allow_out=list(n.policy.allow_out), deny_out=list(n.policy.deny_out))
    policy.internet = n.internet
    return pb.Sandbox(
        sandbox_id=n.sandbox_id,
        network=pb.Network(netns=n.netns, netns_path=n.netns_path, tap=n.tap, guest_ip=n.guest_ip,
                           guest_prefixlen=n.guest_prefixlen, guest_netmask=n.guest_netmask,
                           gateway_ip=n.gateway_ip, guest_mac=n.guest_mac, mtu=n.mtu, sandbox_ip=n.sandbox_ip,
                           host_veth=n.host_veth, boot_ip_arg=n.boot_ip_arg, slot=n.slot),
        policy=policy, labels=n.spec.labels, ports=[port_to_proto(p) for p in n.ports],
        state="allocated", created_unix_ms=int(n.created_at * 1000), egress_address=n.egress_address,
        limits=limits_to_proto(n.limits))

"""Proto <-> core models. Requests become pydantic models before anything runs."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from ..errors import InvalidArgument
from ..models import EgressPolicy, ExposedPort, Network, Protocol, validate_port, validate_sandbox_id
from . import netagent_pb2 as pb

SandboxId = Annotated[str, AfterValidator(validate_sandbox_id)]
Port = Annotated[int, AfterValidator(lambda p: validate_port(p))]

PROTO_TO_PROTOCOL = {pb.PROTOCOL_UNSPECIFIED: Protocol.TCP, pb.PROTOCOL_TCP: Protocol.TCP,
                     pb.PROTOCOL_UDP: Protocol.UDP}
PROTOCOL_TO_PROTO = {Protocol.TCP: pb.PROTOCOL_TCP, Protocol.UDP: pb.PROTOCOL_UDP}
EVENT_TYPES = {"allocated": pb.EVENT_TYPE_ALLOCATED, "released": pb.EVENT_TYPE_RELEASED,
               "policy_updated": pb.EVENT_TYPE_POLICY_UPDATED, "port_exposed": pb.EVENT_TYPE_PORT_EXPOSED,
               "port_unexposed": pb.EVENT_TYPE_PORT_UNEXPOSED, "port_reachability": pb.EVENT_TYPE_PORT_REACHABILITY,
               "flow_denied": pb.EVENT_TYPE_FLOW_DENIED}


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllocateReq(_Req):
    sandbox_id: SandboxId
    policy: EgressPolicy
    labels: dict[str, str]


class SandboxReq(_Req):
    sandbox_id: SandboxId


class PolicyReq(_Req):
    sandbox_id: SandboxId
    policy: EgressPolicy


class ExposeReq(_Req):
    sandbox_id: SandboxId
    guest_port: Port
    protocol: Protocol
    host_port: Port | None = None


class ListReq(_Req):
    labels: dict[str, str]
    state: str = ""


class WatchReq(_Req):
    after_cursor: int
    sandbox_ids: tuple[SandboxId, ...] = ()


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
        state="allocated", created_unix_ms=int(n.created_at * 1000))

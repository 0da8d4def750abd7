"""Typed operations: one small frozen dataclass per thing the core can do.

Values are validated once, where a request enters (the gRPC servicer through
api/convert.py, or the in-process Agent methods), by the constructors below;
from there on they travel typed. The planner never re-checks them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from ..access import check_host_mask, check_mode, token_fits_sni, token_sha256
from ..errors import InvalidArgument
from ..models import AllocateSpec, EgressPolicy, Limits, Protocol, validate_port, validate_protocol, validate_sandbox_id
from ..policy import CompiledPolicy, compile_policy


@dataclass(frozen=True)
class Policy:
    """An egress policy and its compiled form (compiled once, here). `internet`
    may still be None: the planner freezes the host default in."""
    model: EgressPolicy
    compiled: CompiledPolicy

    @classmethod
    def of(cls, data: EgressPolicy | dict[str, Any] | None) -> Policy:
        model = EgressPolicy.parse(data)
        return cls(model, compile_policy(model))


@dataclass(frozen=True)
class Allocate:
    sandbox_id: str
    spec: AllocateSpec
    policy: Policy
    slot: int = -1       # the warm slot, chosen by the agent before planning
    at: float = 0.0      # creation time (the planner reads no clock)
    egress_address: IPv4Address | None = None   # the SNAT source: the spec's, or its labels' (egress_for)

    @classmethod
    def of(cls, sandbox_id: object, spec: AllocateSpec | dict[str, Any] | None = None,
           egress_addresses: Sequence[IPv4Address] = (),
           egress_by_label: Mapping[str, IPv4Address] | None = None) -> Allocate:
        sid = validate_sandbox_id(sandbox_id)
        parsed = AllocateSpec.parse(spec)
        check_egress_address(parsed.egress_address, egress_addresses)
        return cls(sid, parsed, Policy.of(parsed.policy), egress_address=egress_for(parsed, egress_by_label or {}))


def egress_for(spec: AllocateSpec, by_label: Mapping[str, IPv4Address]) -> IPv4Address | None:
    """The spec's own egress address, else the one its labels select
    (config egress_by_label, "key=value" -> address, validated with the
    config). Labels selecting two different addresses are refused."""
    if spec.egress_address is not None:
        return spec.egress_address
    matched = sorted(selector for selector in by_label if _selects(selector, spec.labels))
    chosen = {by_label[selector] for selector in matched}
    if len(chosen) > 1:
        raise InvalidArgument(f"labels {', '.join(matched)} select different egress addresses "
                              f"({', '.join(sorted(map(str, chosen)))}): give egress_address explicitly")
    return next(iter(chosen), None)


def _selects(selector: str, labels: Mapping[str, str]) -> bool:
    key, _, value = selector.partition("=")
    return labels.get(key) == value


def check_egress_address(address: IPv4Address | None, configured: Sequence[IPv4Address]) -> None:
    if address is not None and address not in configured:
        raise InvalidArgument(f"egress_address {address} is not one of this host's egress_addresses "
                              f"({', '.join(map(str, configured)) or 'none configured'})")


@dataclass(frozen=True)
class SetEgressAddress:
    """Give a sandbox another SNAT source (None: the uplink's); its NAT flows are flushed."""
    sandbox_id: str
    address: str | None

    @classmethod
    def of(cls, sandbox_id: object, address: object, egress_addresses: Sequence[IPv4Address]) -> SetEgressAddress:
        sid = validate_sandbox_id(sandbox_id)
        if address in (None, ""):
            return cls(sid, None)
        try:
            parsed = IPv4Address(str(address))
        except ValueError as exc:
            raise InvalidArgument(f"egress_address: {exc}") from None
        check_egress_address(parsed, egress_addresses)
        return cls(sid, str(parsed))


@dataclass(frozen=True)
class SetLimits:
    """New bandwidth limits for a sandbox (applied to its qdiscs after the commit)."""
    sandbox_id: str
    limits: Limits

    @classmethod
    def of(cls, sandbox_id: object, limits: Limits | dict[str, Any] | None) -> SetLimits:
        return cls(validate_sandbox_id(sandbox_id), Limits.parse(limits))


@dataclass(frozen=True)
class Release:
    sandbox_id: str

    @classmethod
    def of(cls, sandbox_id: object) -> Release:
        return cls(validate_sandbox_id(sandbox_id))


@dataclass(frozen=True)
class UpdatePolicy:
    sandbox_id: str
    policy: Policy

    @classmethod
    def of(cls, sandbox_id: object, policy: EgressPolicy | dict[str, Any] | None) -> UpdatePolicy:
        return cls(validate_sandbox_id(sandbox_id), Policy.of(policy))


@dataclass(frozen=True)
class Expose:
    sandbox_id: str
    guest_port: int
    protocol: Protocol
    host_port: int | None = None   # None: the agent picks one

    @classmethod
    def of(cls, sandbox_id: object, guest_port: object, protocol: object = "tcp",
           host_port: object = None, host_port_range: tuple[int, int] = (1, 65535)) -> Expose:
        sid = validate_sandbox_id(sandbox_id)
        port = validate_port(guest_port, "guest_port")
        proto = validate_protocol(protocol)
        if host_port is not None:
            hp = validate_port(host_port, "host_port")
            lo, hi = host_port_range
            if not lo <= hp <= hi:
                raise InvalidArgument(f"host_port {hp} is outside the configured range {lo}-{hi}")
            return cls(sid, port, proto, hp)
        return cls(sid, port, proto)


@dataclass(frozen=True)
class Unexpose:
    sandbox_id: str
    guest_port: int
    protocol: Protocol

    @classmethod
    def of(cls, sandbox_id: object, guest_port: object, protocol: object = "tcp") -> Unexpose:
        return cls(validate_sandbox_id(sandbox_id), validate_port(guest_port, "guest_port"),
                   validate_protocol(protocol))


@dataclass(frozen=True)
class Reachability:
    sandbox_id: str
    guest_port: int
    reachable: bool
    changed_at: float


@dataclass(frozen=True)
class SetPortAccess:
    """A port's edge access; None leaves a field as it is. The token is hashed
    here, at the boundary: nothing past it ever holds the token itself."""
    sandbox_id: str
    guest_port: int
    public: bool | None = None
    token_sha256: str | None = None     # "" clears the token
    host_mask: str | None = None
    mode: str | None = None             # "http" | "tcp": the edge path that serves the port
    token_fits_sni: bool = False        # the token can be a private TCP port's SNI credential

    @classmethod
    def of(cls, sandbox_id: object, guest_port: object, public: bool | None = None,
           access_token: str | None = None, host_mask: str | None = None,
           mode: str | None = None) -> SetPortAccess:
        sid = validate_sandbox_id(sandbox_id)
        port = validate_port(guest_port, "guest_port")
        sha = None if access_token is None else (token_sha256(access_token) if access_token else "")
        return cls(sid, port, public, sha, None if host_mask is None else check_host_mask(host_mask),
                   None if mode is None else check_mode(mode),
                   bool(access_token) and token_fits_sni(sid, port, access_token or ""))


@dataclass(frozen=True)
class SetPaused:
    """The orchestrator paused the sandbox's VM (or resumed it): published in its
    registry record, so edges hold or wake its requests. wake only counts when paused."""
    sandbox_id: str
    paused: bool
    wake: bool

    @classmethod
    def of(cls, sandbox_id: object, paused: object, wake: object = False) -> SetPaused:
        if not isinstance(paused, bool) or not isinstance(wake, bool):
            raise InvalidArgument("paused and wake must be booleans")
        return cls(validate_sandbox_id(sandbox_id), paused, wake and paused)


@dataclass(frozen=True)
class RecordReachability:
    """Probe results that changed (from the prober): stored with their events."""
    ports: tuple[Reachability, ...]


@dataclass(frozen=True)
class DeniedFlow:
    sandbox_id: str
    reason: str
    destination: str
    protocol: str
    port: int


@dataclass(frozen=True)
class RecordDenied:
    flows: tuple[DeniedFlow, ...]


REQUESTS_READ_TO = "intercept_requests_read_to"   # state.db meta key (intercept/requestlog.py)


@dataclass(frozen=True)
class RecordRequests:
    """Intercepted requests' records (intercept/haconfig.py LOG_FORMAT), as events."""
    records: tuple[dict[str, Any], ...]
    read_to: str = ""    # how far the interceptor's files are read with these (JSON), kept with the events


@dataclass(frozen=True)
class DestinationVerdicts:
    sandbox_id: str
    destination: str
    reason: str          # sni or host
    allowed: int
    denied: int


@dataclass(frozen=True)
class RecordVerdicts:
    """First-payload verdicts per destination since the last record (from the checker)."""
    counts: tuple[DestinationVerdicts, ...]


@dataclass(frozen=True)
class SlotReady:
    """A slot was built: record it and add its per-slot elements."""
    slot: int


@dataclass(frozen=True)
class SlotGone:
    """A slot is about to be destroyed: intent first, its elements go."""
    slot: int


@dataclass(frozen=True)
class SlotIncidents:
    """What continuous reconcile found: slots repaired (with what), allocated
    slots whose tap is gone, slots whose netns is gone (quarantined)."""
    repaired: tuple[tuple[int, tuple[str, ...]], ...] = ()
    tap_lost: tuple[int, ...] = ()
    quarantined: tuple[int, ...] = ()


@dataclass(frozen=True)
class CloseUsage:
    """A released sandbox's usage is final: record USAGE_FINAL, remove its
    counter elements, then clean its slot (None: reconcile cleans it)."""
    sandbox_id: str
    ip: str
    final: dict[str, dict[str, int]]
    slot: int | None


@dataclass(frozen=True)
class Resync:
    """Reload the table if it drifted and re-add every element from state."""


Operation = (Allocate | Release | UpdatePolicy | SetEgressAddress | SetLimits | Expose | Unexpose | SetPortAccess
             | RecordReachability | RecordDenied | RecordRequests | RecordVerdicts | SlotReady | SlotGone
             | SlotIncidents | CloseUsage | Resync | SetPaused)
# Operations a caller makes (they delay background refills and cleaning).
CALLER_OPS = (Allocate, Release, UpdatePolicy, SetEgressAddress, SetLimits, Expose, Unexpose, SetPortAccess, SetPaused)

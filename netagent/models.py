"""API models shared by the core, the state store and (later) the gRPC layer."""
from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidArgument

SANDBOX_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,55}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_./-]{0,62}$")


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


class SlotState(StrEnum):
    BUILDING = "building"      # intent recorded, kernel objects may be partial
    READY = "ready"            # warm, unallocated
    ALLOCATED = "allocated"
    DIRTY = "dirty"            # released, conntrack/elements being cleaned
    DESTROYING = "destroying"  # intent to remove kernel objects
    QUARANTINED = "quarantined"  # its netns vanished under it: never handed out again


def validate_sandbox_id(sandbox_id: object) -> str:
    if not isinstance(sandbox_id, str) or not SANDBOX_ID_RE.match(sandbox_id):
        raise InvalidArgument(
            "sandbox_id must be 1-57 chars of [a-z0-9-], starting and ending with [a-z0-9] "
            f"(it becomes a DNS label); got {sandbox_id!r}")
    return sandbox_id


def validate_port(port: object, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgument(f"{what} must be an integer in 1..65535; got {port!r}")
    return port


def validate_protocol(protocol: object) -> Protocol:
    try:
        return Protocol(str(protocol).lower())
    except ValueError:
        raise InvalidArgument(f"protocol must be tcp or udp; got {protocol!r}") from None


class EgressPolicy(BaseModel):
    """A sandbox's egress policy. `internet=None` means the host default."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    internet: bool | None = None
    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: EgressPolicy | dict | None) -> EgressPolicy:
        return _parse(cls, data, "invalid policy")


class Limits(BaseModel):
    """Bandwidth and packet-rate limits of one sandbox. Bits/s: tbf qdiscs
    (datapath/shaper.py); packets/s: an nft policer in the slot (datapath/pps.py).
    None: unlimited. egress: what it sends; ingress: what it receives."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    egress_bps: int | None = Field(None, ge=8_000, le=32_000_000_000)    # tbf's 32-bit bytes/s rate
    ingress_bps: int | None = Field(None, ge=8_000, le=32_000_000_000)
    burst_bytes: int | None = Field(None, ge=1_600, le=1_000_000_000)   # None: 10 ms of the rate, >= 16 KiB
    egress_pps: int | None = Field(None, ge=10, le=100_000_000)
    ingress_pps: int | None = Field(None, ge=10, le=100_000_000)
    burst_packets: int | None = Field(None, ge=1, le=10_000_000)   # None: pps.default_burst (0.1 s, >= 10)

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.egress_bps, self.ingress_bps, self.egress_pps, self.ingress_pps))

    @classmethod
    def parse(cls, data: Limits | dict | None) -> Limits:
        return _parse(cls, data, "invalid limits")


class AllocateSpec(BaseModel):
    """What the caller asks for. A retried allocate must send an equal spec."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: EgressPolicy = EgressPolicy()
    labels: dict[str, str] = Field(default_factory=dict)
    # One of the config's egress_addresses as the SNAT source (None: the uplink's).
    egress_address: ipaddress.IPv4Address | None = None
    limits: Limits = Limits()

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 32:
            raise ValueError("at most 32 labels")
        for key, value in v.items():
            if not LABEL_KEY_RE.match(key):
                raise ValueError(f"bad label key {key!r}")
            if len(value) > 256:
                raise ValueError(f"label {key!r} value longer than 256 chars")
        return v

    @classmethod
    def parse(cls, data: AllocateSpec | dict | None) -> AllocateSpec:
        return _parse(cls, data, "invalid allocate spec")


def _parse(cls: Any, data: Any, what: str) -> Any:
    """A model from a dict (or the model itself); errors become InvalidArgument."""
    if isinstance(data, cls):
        return data
    try:
        return cls.model_validate(data or {})
    except ValidationError as exc:
        raise InvalidArgument(_first_error(what, exc)) from None


def _first_error(what: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{what}: {err['msg']} at {'.'.join(map(str, err['loc'])) or '(root)'}"


class ExposedPort(BaseModel):
    model_config = ConfigDict(frozen=True)

    guest_port: int
    protocol: Protocol
    host_port: int
    # Filled in on output from the prober (TCP only): None until probed.
    reachable: bool | None = None
    changed_at: float = 0.0
    checked_at: float = 0.0


class Network(BaseModel):
    """Everything a VMM needs to attach a guest to its slot."""
    model_config = ConfigDict(frozen=True)

    sandbox_id: str
    slot: int
    netns: str
    netns_path: str
    tap: str
    guest_ip: str
    guest_prefixlen: int
    guest_netmask: str
    gateway_ip: str
    guest_mac: str
    mtu: int
    sandbox_ip: str
    host_veth: str
    boot_ip_arg: str
    spec: AllocateSpec
    policy: EgressPolicy
    internet: bool               # the effective setting (policy or host default)
    egress_address: str = ""     # the SNAT source now ("": the uplink's address)
    limits: Limits = Limits()    # the bandwidth limits now
    created_at: float
    ports: tuple[ExposedPort, ...] = ()

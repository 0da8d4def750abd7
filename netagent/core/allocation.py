"""One sandbox's allocation, as the inventory and the state store hold it."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..access import PortAccess
from ..models import AllocateSpec, EgressPolicy, ExposedPort, Limits, Protocol
from ..policy import CompiledPolicy

PortKey = tuple[int, Protocol]   # (guest port, protocol)


@dataclass(frozen=True)
class Allocation:
    """Immutable: a change makes a new one. `policy` has the host default
    frozen in (internet is never None); `compiled` is its compiled form."""
    sandbox_id: str
    slot: int
    spec: AllocateSpec
    created_at: float
    policy: EgressPolicy
    compiled: CompiledPolicy
    ports: Mapping[PortKey, ExposedPort] = field(default_factory=dict)
    egress_address: str | None = None    # the SNAT source now (None: the uplink's)
    limits: Limits = Limits()            # the bandwidth limits now
    access: Mapping[int, PortAccess] = field(default_factory=dict)   # edge access by guest port (default public)
    mark_generation: int = 0   # bumped by each narrowing policy: its egress ct mark (SlotAddresses.egress_mark)
    paused: bool = False       # the orchestrator paused its VM (SetPaused): the registry record says so
    wake: bool = False         # while paused: edges ask the orchestrator to resume it on a request

"""What a change writes: state rows (to SQLite and to the in-memory inventory,
by the same typed values) and the change object the planner returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..access import PortAccess
from ..firewall import elements as el
from ..models import EgressPolicy, ExposedPort, Protocol, SlotState
from ..policy import CompiledPolicy
from .allocation import Allocation


@dataclass(frozen=True)
class SlotSet:
    slot: int
    state: SlotState


@dataclass(frozen=True)
class SlotDeleted:
    slot: int


@dataclass(frozen=True)
class AllocationAdded:
    allocation: Allocation


@dataclass(frozen=True)
class AllocationDeleted:
    allocation: Allocation


@dataclass(frozen=True)
class PolicySet:
    sandbox_id: str
    policy: EgressPolicy
    compiled: CompiledPolicy
    mark_generation: int


@dataclass(frozen=True)
class PortAdded:
    sandbox_id: str
    port: ExposedPort


@dataclass(frozen=True)
class PortDeleted:
    sandbox_id: str
    port: ExposedPort


@dataclass(frozen=True)
class PortAccessSet:
    sandbox_id: str
    guest_port: int
    access: PortAccess


@dataclass(frozen=True)
class ReachabilitySet:
    sandbox_id: str
    guest_port: int
    reachable: bool
    changed_at: float


Row = (SlotSet | SlotDeleted | AllocationAdded | AllocationDeleted | PolicySet | PortAdded | PortDeleted
       | PortAccessSet | ReachabilitySet)


@dataclass(frozen=True)
class Event:
    type: str
    sandbox_id: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Change:
    """Everything one operation does, for the committer to apply."""
    reply: Any = None
    rows: tuple[Row, ...] = ()
    nft: tuple[el.Op, ...] = ()
    events: tuple[Event, ...] = ()
    port_cursor: tuple[Protocol, int] | None = None   # the host-port picker's next start
    flush_marks: tuple[int, ...] = ()    # dead ct marks (already dropped): entries flushed in the background
    drop_fqdn: tuple[str, ...] = ()      # sandbox IPs whose DNS admissions end now
    clean_slots: tuple[int, ...] = ()    # released slots to clean in the background
    full_sync: bool = False              # reload the table if drifted, re-add every element

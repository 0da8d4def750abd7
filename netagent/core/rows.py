"""What a change writes: state rows (to SQLite and to the in-memory inventory,
by the same typed values) and the change object the planner returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..access import PortAccess
from ..firewall import elements as el
from ..models import EgressPolicy, ExposedPort, Limits, Protocol, SlotState
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
class PausedSet:
    sandbox_id: str
    paused: bool
    wake: bool


@dataclass(frozen=True)
class ReachabilitySet:
    sandbox_id: str
    guest_port: int
    reachable: bool
    changed_at: float


@dataclass(frozen=True)
class EgressSet:
    sandbox_id: str
    address: str | None


@dataclass(frozen=True)
class LimitsSet:
    sandbox_id: str
    limits: Limits


@dataclass(frozen=True)
class UsageReleased:
    """The sandbox is released; its usage row stays until CloseUsage (a crash
    in between closes it at start-up)."""
    sandbox_id: str
    ip: str
    slot: int


@dataclass(frozen=True)
class UsageClosed:
    sandbox_id: str


@dataclass(frozen=True)
class MetaSet:
    """A key of state.db's meta table (SQLite only)."""
    key: str
    value: str


Row = (SlotSet | SlotDeleted | AllocationAdded | AllocationDeleted | PolicySet | PortAdded | PortDeleted
       | PortAccessSet | ReachabilitySet | EgressSet | LimitsSet | UsageReleased | UsageClosed | PausedSet | MetaSet)


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
    flush_marks: tuple[int, ...] = ()    # ct marks flushed before the caller hears back
    dead_marks: tuple[int, ...] = ()     # ct marks that left live_marks (flows dropped): flushed in the background
    drop_fqdn: tuple[str, ...] = ()      # sandbox IPs whose DNS admissions end now
    clean_slots: tuple[int, ...] = ()    # released slots to clean in the background
    shape: tuple[tuple[int, Limits], ...] = ()  # (slot, limits): qdiscs to set after the commit
    close_usage: tuple[tuple[str, int, str], ...] = ()  # (sandbox, slot, sandbox IP): final usage, then clean
    full_sync: bool = False              # reload the table if drifted, re-add every element

"""The in-memory inventory: slots, allocations, host ports, and the host-port
picker. Only the committer (and the warm pool, for slot states) changes it,
and only by applying rows that were written to SQLite in the same step.

`fork()` gives the planner a draft of a burst: a copy-on-write overlay that
sees the burst's earlier changes while the inventory itself stays as it is
until the burst has committed.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import replace
from typing import Any, TypeVar

from ..errors import Conflict, Exhausted
from ..models import Protocol, SlotState
from .allocation import Allocation
from .rows import (
    AllocationAdded,
    AllocationDeleted,
    Change,
    EgressSet,
    LimitsSet,
    MetaSet,
    PausedSet,
    PolicySet,
    PortAccessSet,
    PortAdded,
    PortDeleted,
    ReachabilitySet,
    Row,
    SlotDeleted,
    SlotSet,
)

K = TypeVar("K")
V = TypeVar("V")
_MISSING: Any = object()
_GONE: Any = object()


class Overlay(MutableMapping[K, V]):
    """Writes land in an overlay; the base mapping is never touched. Lookups,
    writes and len are O(1); iteration walks the base once."""

    def __init__(self, base: Mapping[K, V]):
        self.base = base
        self.over: dict[K, V] = {}
        self._len = len(base)

    def __getitem__(self, key: K) -> V:
        v = self.over.get(key, _MISSING)
        if v is _MISSING:
            return self.base[key]
        if v is _GONE:
            raise KeyError(key)
        return v

    def __contains__(self, key: object) -> bool:
        v = self.over.get(key, _MISSING)  # type: ignore[call-overload]
        return key in self.base if v is _MISSING else v is not _GONE

    def __setitem__(self, key: K, value: V) -> None:
        if key not in self:
            self._len += 1
        self.over[key] = value

    def __delitem__(self, key: K) -> None:
        if key not in self:
            raise KeyError(key)
        self.over[key] = _GONE
        self._len -= 1

    def __iter__(self) -> Iterator[K]:
        for key in self.base:
            if key not in self.over:
                yield key
        for key, v in self.over.items():
            if v is not _GONE:
                yield key

    def __len__(self) -> int:
        return self._len


class Inventory:
    def __init__(self, port_range: tuple[int, int], slots: Mapping[int, SlotState] | None = None,
                 allocations: Mapping[str, Allocation] | None = None):
        self.port_range = port_range
        self.slots: MutableMapping[int, SlotState] = dict(slots or {})
        self.allocations: MutableMapping[str, Allocation] = {}
        self.slot_owner: MutableMapping[int, str] = {}
        self.host_ports: dict[Protocol, MutableMapping[int, str]] = {p: {} for p in Protocol}
        self.port_cursor: dict[Protocol, int] = {p: port_range[0] for p in Protocol}
        for rec in (allocations or {}).values():
            self._add(rec)

    def fork(self) -> Inventory:
        """A draft over this inventory: changes to it never reach this one."""
        draft = Inventory.__new__(Inventory)
        draft.port_range = self.port_range
        draft.slots = Overlay(self.slots)
        draft.allocations = Overlay(self.allocations)
        draft.slot_owner = Overlay(self.slot_owner)
        draft.host_ports = {p: Overlay(used) for p, used in self.host_ports.items()}
        draft.port_cursor = dict(self.port_cursor)
        return draft

    # ---- reads --------------------------------------------------------------

    def owner_of_slot(self, slot: int) -> Allocation | None:
        sid = self.slot_owner.get(slot)
        return self.allocations.get(sid) if sid is not None else None

    def pick_host_port(self, proto: Protocol, wanted: int | None) -> int:
        """`wanted` if free; else the next free port from the cursor (so a port
        just released is not handed out again at once)."""
        used = self.host_ports[proto]
        if wanted is not None:
            if wanted in used:
                raise Conflict(f"host port {proto.value}/{wanted} is already used by sandbox {used[wanted]!r}")
            return wanted
        lo, hi = self.port_range
        size = hi - lo + 1
        if len(used) < size:
            port = self.port_cursor[proto]
            for _ in range(size):
                if port not in used:
                    return port
                port = lo + (port + 1 - lo) % size
        raise Exhausted(f"no free {proto.value} host port in {lo}-{hi}")

    def next_cursor(self, port: int) -> int:
        lo, hi = self.port_range
        return lo + (port + 1 - lo) % (hi - lo + 1)

    # ---- writes (rows already written to SQLite) ------------------------------

    def apply_change(self, change: Change) -> None:
        for row in change.rows:
            self.apply(row)
        if change.port_cursor is not None:
            proto, cursor = change.port_cursor
            self.port_cursor[proto] = cursor

    def apply(self, row: Row) -> None:
        match row:
            case SlotSet(slot, state):
                self.slots[slot] = state
            case SlotDeleted(slot):
                self.slots.pop(slot, None)
            case AllocationAdded(rec):
                self._add(rec)
            case AllocationDeleted(rec):
                self.allocations.pop(rec.sandbox_id, None)
                self.slot_owner.pop(rec.slot, None)
                for p in rec.ports.values():
                    self.host_ports[p.protocol].pop(p.host_port, None)
            case PolicySet(sid, policy, compiled, generation):
                self.allocations[sid] = replace(self.allocations[sid], policy=policy, compiled=compiled,
                                                mark_generation=generation)
            case PortAdded(sid, port):
                rec = self.allocations[sid]
                self.allocations[sid] = replace(rec, ports={**rec.ports, (port.guest_port, port.protocol): port})
                self.host_ports[port.protocol][port.host_port] = sid
            case PortDeleted(sid, port):
                rec = self.allocations[sid]
                ports = {k: v for k, v in rec.ports.items() if k != (port.guest_port, port.protocol)}
                self.allocations[sid] = replace(rec, ports=ports)
                self.host_ports[port.protocol].pop(port.host_port, None)
            case LimitsSet(sid, limits):
                self.allocations[sid] = replace(self.allocations[sid], limits=limits)
            case EgressSet(sid, address):
                self.allocations[sid] = replace(self.allocations[sid], egress_address=address)
            case PortAccessSet(sid, guest_port, access):
                rec = self.allocations[sid]
                self.allocations[sid] = replace(rec, access={**rec.access, guest_port: access})
            case PausedSet(sid, paused, wake):
                self.allocations[sid] = replace(self.allocations[sid], paused=paused, wake=wake)
            case ReachabilitySet() | MetaSet():
                pass  # the prober holds reachability in memory; only SQLite keeps it (and meta)

    def _add(self, rec: Allocation) -> None:
        self.allocations[rec.sandbox_id] = rec
        self.slot_owner[rec.slot] = rec.sandbox_id
        for p in rec.ports.values():
            self.host_ports[p.protocol][p.host_port] = rec.sandbox_id

    def count(self, state: SlotState) -> int:
        return sum(1 for s in self.slots.values() if s == state)

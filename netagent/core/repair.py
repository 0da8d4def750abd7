"""Continuous reconcile, the pure part: kernel facts of slots in, repairs out.

The facts of a slot are what its kernel objects look like now (gathered by
datapath/slot_facts.py); `plan_repairs` says what to fix, what to report and
what to quarantine. No I/O: unit-tested without root.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from ..models import SlotState

WATCHED = (SlotState.READY, SlotState.ALLOCATED)


class Fix(StrEnum):
    VETH = "veth"                  # recreate the veth pair (both ends, addresses, route)
    HOST_VETH_UP = "host_veth_up"
    HOST_ADDRESS = "host_address"  # the host end's /31 (the host's route to the sandbox)
    SLOT_VETH_UP = "slot_veth_up"
    ROUTE = "route"                # the slot's default route
    SLOT_RULES = "slot_rules"      # the in-slot nft tables
    TAP = "tap"                    # only in a warm slot: no VMM holds the old one


@dataclass(frozen=True)
class SlotFacts:
    netns: bool
    host_veth: bool = True
    host_veth_up: bool = True
    host_address: bool = True
    # Inside the slot (None: not looked at, e.g. no netns)
    slot_veth: bool | None = True
    slot_veth_up: bool | None = True
    tap: bool | None = True
    route: bool | None = True
    slot_rules: bool | None = True


@dataclass(frozen=True)
class Repairs:
    fixes: Mapping[int, frozenset[Fix]] = field(default_factory=dict)
    tap_lost: tuple[int, ...] = ()       # allocated slots whose tap is gone (report only)
    quarantine: tuple[int, ...] = ()     # slots whose netns is gone

    def __bool__(self) -> bool:
        return bool(self.fixes or self.tap_lost or self.quarantine)


def fixes_for(facts: SlotFacts, allocated: bool) -> frozenset[Fix]:
    if not facts.host_veth or facts.slot_veth is False:
        out = {Fix.VETH}      # a veth pair dies whole; recreating it restores both ends
    else:
        out = set()
        if not facts.host_veth_up:
            out.add(Fix.HOST_VETH_UP)
        if not facts.host_address:
            out.add(Fix.HOST_ADDRESS)
        if facts.slot_veth_up is False:
            out.add(Fix.SLOT_VETH_UP)
        if facts.route is False:
            out.add(Fix.ROUTE)
    if facts.slot_rules is False:
        out.add(Fix.SLOT_RULES)
    if facts.tap is False and not allocated:
        out.add(Fix.TAP)
    return frozenset(out)


def plan_repairs(states: Mapping[int, SlotState], facts: Mapping[int, SlotFacts],
                 reported_taps: frozenset[int] = frozenset()) -> Repairs:
    """What to do about the slots whose facts were gathered. A lost tap is
    reported once (`reported_taps` holds slots already reported)."""
    fixes: dict[int, frozenset[Fix]] = {}
    tap_lost: list[int] = []
    quarantine: list[int] = []
    for idx, f in sorted(facts.items()):
        state = states.get(idx)
        if state not in WATCHED:
            continue   # building, dirty, destroying, quarantined: not ours to repair now
        if not f.netns:
            quarantine.append(idx)
            continue
        allocated = state == SlotState.ALLOCATED
        if want := fixes_for(f, allocated):
            fixes[idx] = want
        if allocated and f.tap is False and idx not in reported_taps:
            tap_lost.append(idx)
    return Repairs(fixes, tuple(tap_lost), tuple(quarantine))

"""Start-up reconcile: make the kernel match the state store.

- Slots whose kernel objects are intact are adopted as they are (no traffic is
  touched; established flows keep their conntrack entries).
- An allocated slot whose objects are missing is rebuilt in place (same index,
  same sandbox IP); any other incomplete slot is removed.
- Kernel objects that carry our prefix but are not in state are removed.
- If rules/slot.nft (or what it is rendered with) changed since the last
  start, every adopted slot's in-slot tables are replaced atomically.

It returns the inventory it settled on; the agent installs it, then re-adds
every element from it in one transaction (a resync).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .addressing import AddressPlan
from .core.inventory import Inventory
from .models import SlotState
from .state import StateStore

log = logging.getLogger("netagent.reconcile")


@dataclass(frozen=True)
class KernelOps:
    """The kernel work reconcile needs, each run on a worker thread."""
    inventory: Callable[[], Awaitable[tuple[set[int], set[int]]]]   # slots with a netns, with a host veth
    build: Callable[[int], Awaitable[Any]]
    destroy: Callable[[int], Awaitable[Any]]
    reload_rules: Callable[[int], Awaitable[Any]]
    rules_fingerprint: str        # of the in-slot rules as rendered now


@dataclass
class Reconciled:
    inventory: Inventory
    ready: list[int]              # warm slots, for the pool
    dirty: list[int]              # released slots still to clean
    report: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


async def reconcile(store: StateStore, addresses: AddressPlan, kernel: KernelOps,
                    port_range: tuple[int, int]) -> Reconciled:
    started = time.monotonic()
    snap = store.load()
    with_netns, with_veth = await kernel.inventory()
    intact = with_netns & with_veth
    owner = {rec.slot: rec.sandbox_id for rec in snap.allocations.values()}
    report = {"adopted": 0, "rebuilt": 0, "removed": 0, "orphans": 0, "slot_rules_reloaded": 0}

    keep: dict[int, SlotState] = {}
    doomed: list[int] = []
    rebuild: list[int] = []
    for idx, state in snap.slots.items():
        if idx in owner:
            keep[idx] = SlotState.ALLOCATED
            if idx not in intact:
                rebuild.append(idx)
        elif state in (SlotState.READY, SlotState.DIRTY) and idx in intact:
            keep[idx] = state
        elif state == SlotState.QUARANTINED:
            keep[idx] = state       # its netns vanished while running: never reused
        else:
            doomed.append(idx)
    orphans = sorted((with_netns | with_veth) - set(snap.slots))

    for idx in doomed + orphans + rebuild:
        await kernel.destroy(idx)
    for idx in rebuild:
        await kernel.build(idx)
        log.warning("slot %d of sandbox %s was missing kernel objects; rebuilt", idx, owner[idx])
    with store.transaction() as tx:
        for idx in doomed:
            tx.delete_slot(idx)
        for idx, state in keep.items():
            tx.set_slot(idx, state)

    if store.get_meta("slot_rules_fingerprint") != kernel.rules_fingerprint:
        adopted = [idx for idx in keep if idx not in rebuild]
        for idx in adopted:
            await kernel.reload_rules(idx)
        report["slot_rules_reloaded"] = len(adopted)
        if adopted:
            log.warning("rules/slot.nft changed: reloaded the in-slot tables of %d slot(s)", len(adopted))
        store.set_meta("slot_rules_fingerprint", kernel.rules_fingerprint)

    report.update(adopted=len(keep) - len(rebuild), rebuilt=len(rebuild), removed=len(doomed), orphans=len(orphans))
    duration = time.monotonic() - started
    log.info("reconcile: %s in %.0f ms", report, 1000 * duration)
    return Reconciled(
        inventory=Inventory(port_range, keep, snap.allocations),
        ready=sorted(i for i, s in keep.items() if s == SlotState.READY),
        dirty=[i for i, s in keep.items() if s == SlotState.DIRTY],
        report=report, summary={"at": time.time(), "duration_s": duration, **report})

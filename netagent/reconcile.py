"""Start-up reconcile: make the kernel match the state store.

- Slots whose kernel objects are intact are adopted as they are (no traffic is
  touched; established flows keep their conntrack entries).
- An allocated slot whose objects are missing is rebuilt in place (same index,
  same sandbox IP); any other incomplete slot is removed.
- Kernel objects that carry our prefix but are not in state are removed.
- The ruleset is reloaded only if it differs, and every element is re-added
  from state in one transaction.
- If rules/slot.nft (or what it is rendered with) changed since the last
  start, every adopted slot's in-slot tables are replaced atomically.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import netns
from .datapath.host import link_names
from .models import SlotState

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("netagent.reconcile")


def kernel_inventory(agent: Agent) -> tuple[set[int], set[int]]:
    """Slot indexes that have a netns, and that have a host veth."""
    plan = agent.plan
    with_netns = {i for n in netns.list_names(f"{plan.prefix}-") if (i := plan.index_of_netns(n)) is not None}
    with_veth = {i for n in link_names(agent.builder.host_ipr()) if (i := plan.index_of_host_veth(n)) is not None}
    return with_netns, with_veth


async def reconcile(agent: Agent) -> dict[str, int]:
    started = time.monotonic()
    snap = agent.store.load()
    with_netns, with_veth = await agent.host.call(kernel_inventory, agent)
    intact = with_netns & with_veth
    allocated_slots = {rec.slot for rec in snap.allocations.values()}
    report = {"adopted": 0, "rebuilt": 0, "removed": 0, "orphans": 0, "slot_rules_reloaded": 0}

    keep: dict[int, SlotState] = {}
    doomed: list[int] = []
    rebuild: list[int] = []
    for idx, state in snap.slots.items():
        if idx in allocated_slots:
            keep[idx] = SlotState.ALLOCATED
            if idx not in intact:
                rebuild.append(idx)
        elif state in (SlotState.READY, SlotState.DIRTY) and idx in intact:
            keep[idx] = state
        else:
            doomed.append(idx)
    orphans = sorted((with_netns | with_veth) - set(snap.slots))

    for idx in doomed + orphans + rebuild:
        await agent.builds.call(agent.builder.destroy, idx)
    for idx in rebuild:
        await agent.builds.call(agent.builder.build, idx)
        log.warning("slot %d of sandbox %s was missing kernel objects; rebuilt", idx,
                    next(r.sandbox_id for r in snap.allocations.values() if r.slot == idx))
    with agent.store.transaction() as tx:
        for idx in doomed:
            tx.delete_slot(idx)
        for idx, state in keep.items():
            tx.set_slot(idx, state)

    agent.slots = keep
    agent.allocations = snap.allocations
    agent.slot_owner = {rec.slot: rec.sandbox_id for rec in snap.allocations.values()}
    for rec in snap.allocations.values():
        for p in rec.ports.values():
            agent.ports_used[p.protocol][p.host_port] = rec.sandbox_id
    slot_fp = agent.builder.rules_fingerprint()
    if agent.store.get_meta("slot_rules_fingerprint") != slot_fp:
        adopted = [idx for idx in keep if idx not in rebuild]
        for idx in adopted:
            await agent.builds.call(agent.builder.reload_rules, idx)
        report["slot_rules_reloaded"] = len(adopted)
        if adopted:
            log.warning("rules/slot.nft changed: reloaded the in-slot tables of %d slot(s)", len(adopted))
        agent.store.set_meta("slot_rules_fingerprint", slot_fp)
    agent.ruleset_fingerprint = agent.store.get_meta("ruleset_fingerprint")
    await agent.resync()

    dirty = [i for i, s in keep.items() if s == SlotState.DIRTY]
    agent.ready.extend(sorted(i for i, s in keep.items() if s == SlotState.READY))
    if dirty:
        await agent._clean_slots(dirty)

    report.update(adopted=len(keep) - len(rebuild), rebuilt=len(rebuild), removed=len(doomed), orphans=len(orphans))
    agent.stats["reconcile_repairs"] += len(rebuild) + len(doomed) + len(orphans)
    agent.metrics.reconcile_repairs(len(rebuild) + len(doomed) + len(orphans))
    agent.metrics.observe_reconcile(time.monotonic() - started)
    agent.stats["last_reconcile"] = {"at": time.time(), "duration_s": time.monotonic() - started, **report}
    log.info("reconcile: %s in %.0f ms", report, 1000 * (time.monotonic() - started))
    return report

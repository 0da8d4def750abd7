"""What follows a committed burst (the committer's after-commit step): tell the
prober and the flow record, end dropped DNS admissions, flush the flows the
commit ended, shape, take released sandboxes' final usage and clean their slots.
A mixin of `agent.Agent` beside CoreApi and InterceptApi: it only orders the
owners' calls; each owner does its own work."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..datapath import conntrack
from ..logs import for_sandbox
from . import ops
from .rows import Change

if TYPE_CHECKING:
    from ..intercept.service import InterceptService
    from ..reachability.tracker import Reachability
    from ..usage.meter import UsageMeter
    from ..workers import Cleaner
    from .admission import DnsAdmission
    from .inventory import Inventory
    from .pool import WarmPool

log = logging.getLogger("netagent")


class CommitEffects:
    inventory: Inventory
    flows: Any                           # flows/recorder.py (with its metrics)
    reachability: Reachability
    cleaner: Cleaner
    admission: DnsAdmission
    pool: WarmPool
    traffic: Any
    meter: UsageMeter
    intercept: InterceptService | None

    _cleaner_fw: Callable[[], Any]      # the cleaner thread's firewall driver (agent.py)

    async def _after_commit(self, done: list[tuple[ops.Operation, Change]]) -> None:
        """Once a burst has committed: tell the prober, end dropped DNS
        admissions, flush the flows a new egress address ends; then in the
        background flush the entries of flows the commit killed (their marks are
        no longer live), take released sandboxes' final usage and clean their slots."""
        drop = [ip for _, c in done for ip in c.drop_fqdn]
        marks = [m for _, c in done for m in c.flush_marks]
        clean = [s for _, c in done for s in c.clean_slots]
        self.flows.on_committed([op for op, _ in done], self.inventory.allocations)
        for op, change in done:
            self.reachability.on_committed(change.rows)
            if isinstance(op, ops.CALLER_OPS):
                for_sandbox(log, op.sandbox_id, op=type(op).__name__).info("%s done", type(op).__name__)
        if drop:
            await self.cleaner.call(lambda: [self.admission.forget(self._cleaner_fw(), ip) for ip in drop])
        if marks:
            await self.cleaner.call(lambda: [conntrack.flush_mark(m) for m in marks])
        if dead := [m for _, c in done for m in c.dead_marks]:
            self.pool.spawn(self._flush_dead_marks(dead))
        if shapes := [s for _, c in done for s in c.shape]:
            await self.traffic.shape(shapes)
        if released := [c for _, change in done for c in change.close_usage]:
            for sid, slot, ip in released:
                self.meter.release(sid, ip, slot)
                if self.intercept is not None:
                    await self.intercept.forget(sid)
                if slot >= 0:
                    self.pool.coming_back(slot)
            self.pool.spawn(self._close_usage_when_quiet())
        if clean:
            self.pool.spawn(self.pool.clean(clean))

    async def _close_usage_when_quiet(self) -> None:
        """Final counts of released sandboxes, then their slots' cleaning: at a
        quiet moment (as the pool's own background work), so a burst of
        calls does not queue a CloseUsage commit behind each release; the
        waiting ones close together in one reading and one burst. Their flows
        are dead already (live_marks), so waiting counts nothing more."""
        await self.pool.wait_quiet()
        await self.meter.close_pending()

    async def _flush_dead_marks(self, marks: list[int]) -> None:
        """Off the request path: the flows are already dropped (drop_dead_flow);
        this only frees their conntrack entries (one walk of the hash each)."""
        try:
            await self.cleaner.call(lambda: [conntrack.flush_mark(m) for m in marks])
        except Exception:
            log.exception("flushing dead ct marks %s failed; the entries expire on their own", marks)

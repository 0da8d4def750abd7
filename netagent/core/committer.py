"""The one committer: every change to state, nft elements and the inventory
goes through it.

It takes every queued operation (a burst), plans each against a draft of the
inventory (so later operations see earlier ones), writes their rows in one
SQLite transaction, applies their element ops in one nft transaction, and
commits SQLite. Only then does the inventory take the changes. If nft fails,
SQLite is rolled back and the draft dropped: callers see all of their change
or none of it, and get Unavailable (safe to retry).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import NetagentError, Unavailable
from ..events import EventLog
from ..firewall import elements as el
from ..state import StateStore
from . import ops
from .inventory import Inventory
from .planner import PlanContext, plan
from .rows import Change

log = logging.getLogger("netagent.commit")


@dataclass
class _Queued:
    op: ops.Operation
    future: asyncio.Future[Any]


def one_op_per_sandbox(queued: list[_Queued]) -> tuple[list[_Queued], list[_Queued]]:
    """This burst and the rest: at most one operation per sandbox in a burst.
    Two on one sandbox in one nft transaction delete and re-add the same
    elements, which the kernel refuses (EBUSY/ENOENT), failing the whole
    burst; a sandbox's later operations wait for the next burst, in order."""
    burst: list[_Queued] = []
    later: list[_Queued] = []
    touched: set[str] = set()
    for q in queued:
        sid = q.op.sandbox_id if isinstance(q.op, ops.CALLER_OPS) else None
        if sid is not None and sid in touched:
            later.append(q)
            continue
        burst.append(q)
        if sid is not None:
            touched.add(sid)
    return burst, later


@dataclass
class Burst:
    """What the committer applies for one burst."""
    changes: list[Change]
    draft: Inventory

    @property
    def nft(self) -> list[el.Op]:
        return [o for c in self.changes for o in c.nft]

    @property
    def full_sync(self) -> bool:
        return any(c.full_sync for c in self.changes)


class Committer:
    def __init__(self, store: StateStore, events: EventLog, db_lock: asyncio.Lock,
                 inventory: Callable[[], Inventory], context: Callable[[], PlanContext],
                 apply_nft: Callable[[Burst], Awaitable[None]],
                 after_commit: Callable[[list[tuple[ops.Operation, Change]]], Awaitable[None]]):
        self.store = store
        self.events = events
        self.db_lock = db_lock
        self.inventory = inventory
        self.context = context
        self.apply_nft = apply_nft        # one transaction (or a full sync) for the burst
        self.after_commit = after_commit  # hooks, flushes, cleanups, before callers hear back
        self.commits = 0
        self._queue: list[_Queued] = []
        self._wake = asyncio.Event()
        self.busy = False

    @property
    def idle(self) -> bool:
        return not self._queue and not self.busy

    async def submit(self, op: ops.Operation) -> Any:
        """Queue an operation for the next burst; its reply once committed."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(op, future))
        self._wake.set()
        return await asyncio.shield(future)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = one_op_per_sandbox(self._queue)
            if self._queue:
                self._wake.set()
            if not batch:
                continue
            self.busy = True
            try:
                await self.commit(batch)
            except Exception as exc:  # never let the committer die
                log.exception("commit failed")
                for q in batch:
                    if not q.future.done():
                        q.future.set_exception(Unavailable(f"commit failed: {exc}"))
            finally:
                self.busy = False

    async def commit(self, batch: list[_Queued]) -> None:
        self.commits += 1
        accepted: list[tuple[_Queued, Change]] = []
        async with self.db_lock:
            draft = self.inventory().fork()
            ctx = self.context()
            self.store.db.execute("BEGIN IMMEDIATE")
            tx = self.store.tx()
            for q in batch:
                try:
                    change = plan(draft, q.op, ctx)
                except NetagentError as exc:
                    q.future.set_exception(exc)
                    continue
                for row in change.rows:
                    tx.write(row)
                draft.apply_change(change)
                accepted.append((q, change))
            burst = Burst([c for _, c in accepted], draft)
            try:
                await self.apply_nft(burst)
            except BaseException as exc:
                log.warning("burst of %d op(s) rolled back: %r", len(accepted), exc)
                self.store.db.execute("ROLLBACK")
                err = exc if isinstance(exc, NetagentError) else Unavailable(f"{type(exc).__name__}: {exc}")
                for q, _ in accepted:
                    q.future.set_exception(err)
                if not isinstance(exc, Exception):
                    raise
                return
            published = [self.events.record(e.type, e.sandbox_id, e.data) for c in burst.changes for e in c.events]
            self.store.db.execute("COMMIT")
            base = self.inventory()
            for change in burst.changes:
                base.apply_change(change)
        self.events.publish(published)
        await self.after_commit([(q.op, c) for q, c in accepted])
        for q, change in accepted:
            if not q.future.done():
                q.future.set_result(change.reply)

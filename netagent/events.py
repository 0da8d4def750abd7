"""The event log behind WatchEvents: written in the same SQLite transaction as
the change it describes, so a cursor survives restarts and never skips."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .errors import FailedPrecondition
from .state import StateStore, Tx

QUEUE_LIMIT = 10_000


@dataclass(frozen=True)
class Event:
    cursor: int
    ts: float
    type: str
    sandbox_id: str
    data: dict[str, Any]


class EventLog:
    def __init__(self, store: StateStore, retained: int = 100_000):
        self.store = store
        self.retained = retained
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._since_trim = 0

    def record(self, type_: str, sandbox_id: str, data: dict[str, Any]) -> Event:
        """Call inside the commit's SQLite transaction."""
        ts = time.time()
        cursor = Tx(self.store.db).add_event(ts, type_, sandbox_id, json.dumps(data, separators=(",", ":")))
        self._since_trim += 1
        if self._since_trim >= 1000:
            Tx(self.store.db).trim_events(self.retained)
            self._since_trim = 0
        return Event(cursor, ts, type_, sandbox_id, data)

    def publish(self, events: list[Event]) -> None:
        for queue in list(self._subscribers):
            for event in events:
                if queue.full():
                    self._subscribers.discard(queue)  # too slow: it resumes from its cursor
                    queue.get_nowait()
                    queue.put_nowait(None)  # wake it so it sees it was dropped
                    break
                queue.put_nowait(event)

    async def watch(self, after: int, sandbox_ids: set[str] | None = None) -> AsyncIterator[Event]:
        """Events after `after` from the log, then live ones, in cursor order."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.add(queue)
        try:
            oldest, latest = self.store.event_bounds()
            if after > latest:
                raise FailedPrecondition(f"cursor {after} is past this agent's latest event ({latest}); "
                                         "it belongs to another agent or a wiped state: resync with List")
            if after and oldest and after < oldest - 1:
                raise FailedPrecondition(f"cursor {after} is older than the oldest retained event ({oldest}); "
                                         "resync with List and watch from the latest cursor")
            last = after
            while rows := self.store.events_after(last):
                for cursor, ts, type_, sid, data in rows:
                    last = cursor
                    if not sandbox_ids or sid in sandbox_ids:
                        yield Event(cursor, ts, type_, sid, json.loads(data))
            while True:
                if queue not in self._subscribers:
                    raise FailedPrecondition("event consumer too slow; resume from the last cursor")
                event = await queue.get()
                if event is None or event.cursor <= last:
                    continue
                last = event.cursor
                if not sandbox_ids or event.sandbox_id in sandbox_ids:
                    yield event
        finally:
            self._subscribers.discard(queue)

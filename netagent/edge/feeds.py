"""Registry change feeds for the edge's control plane: a snapshot, then changes.

SQLite: poll rows by change_id (a table-wide counter every stored write bumps),
and list live ids now and then to notice records that expired without a write.
Redis: subscribe to the change channel that the agent's write script publishes
to, then take a snapshot; expiry is tracked
from each message's TTL and confirmed with PTTL before a record is dropped.
A lost connection raises FeedLost: the control plane then resyncs fully.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from redis.exceptions import RedisError

from ..registry import RegistryError
from ..registry.redis import RedisRegistry
from ..registry.sqlite import SqliteRegistry
from .maps import Entries, entries_from_json


class FeedLost(Exception):
    """The feed may have missed changes: resync from a new snapshot."""


@dataclass(frozen=True)
class Change:
    sandbox_id: str
    entries: Entries     # what the maps must now hold for it ({}: nothing, the sandbox is gone)


def decode_change(sandbox_id: str, raw: str | None) -> Change:
    return Change(sandbox_id, entries_from_json(sandbox_id, raw))


class SqliteFeed:
    def __init__(self, registry: SqliteRegistry, poll_s: float = 0.02, expiry_check_s: float = 1.0) -> None:
        self.registry = registry
        self.poll_s = poll_s
        self.expiry_check_s = expiry_check_s
        self._cursor = 0
        self._live: set[str] = set()
        self._next_expiry_check = 0.0

    async def snapshot(self) -> list[Change]:
        self._cursor, self._live = 0, set()
        latest: dict[str, Change] = {}
        for change in await self._read_all():
            latest[change.sandbox_id] = change
            (self._live.add if change.entries else self._live.discard)(change.sandbox_id)
        self._next_expiry_check = time.monotonic() + self.expiry_check_s
        return [c for c in latest.values() if c.entries]

    async def _read_all(self) -> list[Change]:
        out = []
        while True:
            rows = await self._changed()
            out += rows
            if len(rows) < 10_000:
                return out

    async def _changed(self) -> list[Change]:
        try:
            rows = await self.registry.changed_since(self._cursor)
        except RegistryError as exc:
            raise FeedLost(str(exc)) from exc
        if rows:
            self._cursor = rows[-1][1]
        return [decode_change(sid, raw) for sid, _seq, raw in rows]

    async def changes(self) -> list[Change]:
        """The changes since the last call; none (after one poll interval) if nothing changed."""
        changes = await self._read_all()
        for change in changes:
            (self._live.add if change.entries else self._live.discard)(change.sandbox_id)
        if time.monotonic() >= self._next_expiry_check:
            self._next_expiry_check = time.monotonic() + self.expiry_check_s
            try:
                expired, live_count = await self.registry.expiry_scan()
                expired &= self._live
                if len(self._live) - len(expired) != live_count:    # some expired rows were purged already
                    expired = self._live - await self.registry.live_ids()
            except RegistryError as exc:
                raise FeedLost(str(exc)) from exc
            self._live -= expired
            changes += [Change(sid, {}) for sid in sorted(expired)]
        if not changes:
            await asyncio.sleep(self.poll_s)
        return changes

    async def close(self) -> None:
        pass


class RedisFeed:
    def __init__(self, registry: RedisRegistry, expiry_check_s: float = 0.25) -> None:
        self.registry = registry
        self.expiry_check_s = expiry_check_s
        self._pubsub = None
        self._deadlines: dict[str, float] = {}     # sandbox id -> monotonic expiry

    async def snapshot(self) -> list[Change]:
        """Subscribe first, so no change between the snapshot and the first message is lost."""
        await self.close()
        try:
            self._pubsub = self.registry.pubsub()
            await self._pubsub.subscribe(*self.registry.change_channels)
            rows = await self.registry.raw_records()
        except (RedisError, OSError, RegistryError) as exc:
            await self.close()
            raise FeedLost(str(exc)) from exc
        now = time.monotonic()
        changes = [decode_change(sid, raw) for sid, raw, _ in rows]
        self._deadlines = {sid: now + ttl / 1000 for sid, _, ttl in rows if ttl > 0}
        return [c for c in changes if c.entries]

    async def changes(self) -> list[Change]:
        assert self._pubsub is not None, "snapshot() first"
        changes: list[Change] = []
        try:
            message = await self._pubsub.get_message(timeout=self.expiry_check_s)
            while message is not None:
                if message.get("type") == "message":
                    changes.append(self._parse(message["data"]))
                message = await self._pubsub.get_message(timeout=0)
        except (RedisError, OSError) as exc:
            raise FeedLost(f"redis change channel: {type(exc).__name__}: {exc}") from exc
        return changes + await self._expired()

    def _parse(self, data: str) -> Change:
        ttl_text, _, raw = data.partition("\n")
        sid = _sandbox_id_of(raw)
        change = decode_change(sid, raw)
        if not change.entries:
            self._deadlines.pop(sid, None)
        elif ttl_text.isdigit():
            self._deadlines[sid] = time.monotonic() + int(ttl_text) / 1000
        return change

    async def _expired(self) -> list[Change]:
        now = time.monotonic()
        due = [sid for sid, deadline in self._deadlines.items() if deadline <= now]
        out = []
        for sid in due:
            try:
                ttl = await self.registry.pttl(sid)     # refreshed without a write?
            except RegistryError as exc:
                raise FeedLost(str(exc)) from exc
            if ttl > 0:
                self._deadlines[sid] = now + ttl / 1000
            else:
                del self._deadlines[sid]
                out.append(Change(sid, {}))
        return out

    async def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                pass


def _sandbox_id_of(raw: str) -> str:
    try:
        doc = json.loads(raw)
        return str(doc.get("sandbox_id", "")) if isinstance(doc, dict) else ""
    except ValueError:
        return ""


def open_feed(registry: SqliteRegistry | RedisRegistry) -> SqliteFeed | RedisFeed:
    if isinstance(registry, SqliteRegistry):
        return SqliteFeed(registry)
    if isinstance(registry, RedisRegistry):
        return RedisFeed(registry)
    raise ValueError(f"no change feed for {type(registry).__name__}")

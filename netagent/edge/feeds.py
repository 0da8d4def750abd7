"""Registry change feeds for the edge's control plane: a snapshot, then changes.

SQLite: poll rows by change_id (a table-wide counter every stored write bumps),
and list live ids now and then to notice records that expired without a write
or whose node died (the queries check the node, docs/registry.md "Liveness").
Redis: subscribe to the change channel that the agent's write script publishes
to, then take a snapshot; a record is served while its node's key lives
(NodeLiveness: node TTLs read with PTTL, an expiry confirmed before its records
are dropped); a v1 record's own TTL is tracked from each message too.
A lost connection raises FeedLost: the control plane then resyncs fully.
"""
from __future__ import annotations

import asyncio
import json
import time

from redis.exceptions import RedisError

from ..registry import RegistryError
from ..registry.records import lives_with_node
from ..registry.redis import RedisRegistry
from ..registry.sqlite import SqliteRegistry
from .liveness import Change, NodeLiveness
from .maps import entries_from_json


class FeedLost(Exception):
    """The feed may have missed changes: resync from a new snapshot."""


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


NO_EXPIRY_RECHECK_S = 60.0     # a node key without a TTL (not written by an agent): checked again after this

# (sandbox id, its node id if the record is served while its node lives (v2), map entries)
Parsed = tuple[str, str | None, dict]


class RedisFeed:
    def __init__(self, registry: RedisRegistry, expiry_check_s: float = 0.25) -> None:
        self.registry = registry
        self.expiry_check_s = expiry_check_s
        self._pubsub = None
        self._deadlines: dict[str, float] = {}     # sandbox id -> monotonic expiry (a record with a TTL: v1)
        self._nodes = NodeLiveness()

    async def snapshot(self) -> list[Change]:
        """Subscribe first, so no change between the snapshot and the first message is lost."""
        await self.close()
        try:
            self._pubsub = self.registry.pubsub()
            await self._pubsub.subscribe(self.registry.change_channel)
            rows = await self.registry.raw_records()
        except (RedisError, OSError, RegistryError) as exc:
            await self.close()
            raise FeedLost(str(exc)) from exc
        now = time.monotonic()
        self._deadlines = {sid: now + ttl / 1000 for sid, _, ttl in rows if ttl > 0}
        self._nodes = NodeLiveness()
        parsed = [_parse_record(sid, raw) for sid, raw, _ in rows]
        await self._learn_nodes({node for _, node, _ in parsed if node})
        return [c for c in self._apply(parsed) if c.entries]

    async def changes(self) -> list[Change]:
        assert self._pubsub is not None, "snapshot() first"
        parsed: list[Parsed] = []
        try:
            message = await self._pubsub.get_message(timeout=self.expiry_check_s)
            while message is not None:
                if message.get("type") == "message":
                    parsed.append(self._parse(message["data"]))
                message = await self._pubsub.get_message(timeout=0)
        except (RedisError, OSError) as exc:
            raise FeedLost(f"redis change channel: {type(exc).__name__}: {exc}") from exc
        changes = await self._learn_nodes({node for _, node, _ in parsed if node})
        return changes + self._apply(parsed) + await self._expired() + await self._dead_nodes()

    def _parse(self, data: str) -> Parsed:
        ttl_text, _, raw = data.partition("\n")
        sid, node, entries = _parse_record(_sandbox_id_of(raw), raw)
        if entries and ttl_text.isdigit():
            self._deadlines[sid] = time.monotonic() + int(ttl_text) / 1000
        else:
            self._deadlines.pop(sid, None)
        return sid, node, entries

    def _apply(self, parsed: list[Parsed]) -> list[Change]:
        out = []
        for sid, node, entries in parsed:
            change = Change(sid, entries) if node is None else self._nodes.record(sid, node, entries)
            if change is not None:
                out.append(change)
        return out

    async def _node_ttls(self, node_ids: list[str]) -> dict[str, int]:
        try:
            return await self.registry.node_ttls(node_ids)
        except RegistryError as exc:
            raise FeedLost(str(exc)) from exc

    async def _learn_nodes(self, node_ids: set[str]) -> list[Change]:
        """Look up the keys of nodes not known alive; serve the records of those alive."""
        unknown = sorted(self._nodes.unknown(node_ids))
        out: list[Change] = []
        if unknown:
            now = time.monotonic()
            for node, ttl in (await self._node_ttls(unknown)).items():
                if ttl != -2:                    # -1: a key without expiry, alive until changed
                    out += self._nodes.node_alive(node, now + (ttl / 1000 if ttl > 0 else NO_EXPIRY_RECHECK_S))
        return out

    async def _dead_nodes(self) -> list[Change]:
        """Nodes whose key may have expired: confirmed with PTTL (a heartbeat since extends it)."""
        due = self._nodes.due(time.monotonic())
        out: list[Change] = []
        if due:
            now = time.monotonic()
            for node, ttl in (await self._node_ttls(due)).items():
                if ttl == -2:
                    out += self._nodes.node_dead(node)
                else:
                    self._nodes.node_alive(node, now + (ttl / 1000 if ttl > 0 else NO_EXPIRY_RECHECK_S))
        return out

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
                if (change := self._nodes.record(sid, "", {})) is not None:
                    out.append(change)
        return out

    async def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                pass


def _parse_record(sid: str, raw: str) -> Parsed:
    """The node is named only for a record served while its node lives (v2): a v1
    record, a tombstone or an unreadable one goes to the maps as it is."""
    entries = entries_from_json(sid, raw)
    try:
        doc = json.loads(raw)
    except ValueError:
        return sid, None, entries
    node = doc.get("node_id") if isinstance(doc, dict) and lives_with_node(doc.get("v"), doc.get("deleted")) else None
    return sid, node if isinstance(node, str) and node else None, entries


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

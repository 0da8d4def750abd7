"""SQLite registry backend: the embedded default for a single host.

The agent writes and a separate edge process may read the same file, so the
database runs in WAL mode with a busy timeout. Every sqlite call runs on one
dedicated thread, never on the event loop. Times are this host's clock.
A live v2 sandbox record never expires by itself: it is served while its
node's row is live (NODE_ALIVE); tombstones and node rows expire by TTL.
"""
from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .base import NodeIdInUse, Registry, RegistryError, UnreadableRecord
from .ownership import INSTANCE_LABEL, Stored, Verdict, decide, node_id_taken
from .records import READABLE_VERSIONS, NodeRecord, SandboxRecord

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
PURGE_INTERVAL_S = 60.0
NO_EXPIRY = 1e18        # expires_at of a live record: it lives while its node does

SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    deleted    INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    record     TEXT NOT NULL,
    change_id  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sandboxes_by_node ON sandboxes(node_id);
CREATE TABLE IF NOT EXISTS nodes (
    node_id    TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    record     TEXT NOT NULL
);
"""

# Added after the first release (an older file gets the column at open): a counter
# over the whole table, bumped by every stored write, that edges poll for changes.
ADD_CHANGE_ID = """
ALTER TABLE sandboxes ADD COLUMN change_id INTEGER NOT NULL DEFAULT 0
"""
CHANGE_ID_INDEX = "CREATE INDEX IF NOT EXISTS sandboxes_by_change ON sandboxes(change_id)"

# Runs inside BEGIN IMMEDIATE after ownership.decide said yes, so the read of the
# stored head and this write are one atomic step.
PUT_SANDBOX = """
INSERT INTO sandboxes (sandbox_id, node_id, seq, deleted, expires_at, record, change_id)
VALUES (:sandbox_id, :node_id, :seq, :deleted, :expires_at, :record,
        (SELECT IFNULL(MAX(change_id), 0) + 1 FROM sandboxes))
ON CONFLICT (sandbox_id) DO UPDATE SET
    node_id = excluded.node_id, seq = excluded.seq, deleted = excluded.deleted,
    expires_at = excluded.expires_at, record = excluded.record, change_id = excluded.change_id
"""

# An expired row counts as absent (the same as an expired key in redis).
STORED_HEAD = ("SELECT node_id, seq, deleted, CASE WHEN json_valid(record) THEN json_extract(record, '$.v') END "
               "FROM sandboxes WHERE sandbox_id = ? AND expires_at > ?")

# A v2 sandbox row (expires_at NO_EXPIRY) is served only while its node's row is live
# (docs/registry.md, "Liveness"); a v1 row by its own expires_at.
NODE_ALIVE = "EXISTS (SELECT 1 FROM nodes WHERE nodes.node_id = sandboxes.node_id AND nodes.expires_at > :now)"
SERVED = f"deleted = 0 AND expires_at > :now AND (expires_at < {NO_EXPIRY} OR {NODE_ALIVE})"

UPSERT_NODE = """
INSERT INTO nodes (node_id, expires_at, record) VALUES (?, ?, ?)
ON CONFLICT (node_id) DO UPDATE SET expires_at = excluded.expires_at, record = excluded.record
"""

# Extend only live, non-tombstone rows still owned by this node.
EXTEND_SANDBOXES = """
UPDATE sandboxes SET expires_at = :expires_at
WHERE node_id = :node_id AND deleted = 0 AND expires_at > :now
  AND sandbox_id IN (SELECT value FROM json_each(:ids))
"""


def path_from_url(url: str) -> str:
    """`sqlite:///var/lib/x.db` -> `/var/lib/x.db` (the path must be absolute)."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"not a sqlite registry URL: {url!r}")
    path = url[len("sqlite://"):]
    if not path.startswith("/"):
        raise ValueError(f"sqlite registry URL needs an absolute path (sqlite:///abs/path.db): {url!r}")
    return path


class SqliteRegistry(Registry):
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = path_from_url(url)
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._next_purge = 0.0

    # -- plumbing: everything below `_db_*` runs on the registry thread --

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-sqlite")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn, args)
        except (sqlite3.Error, OSError) as exc:
            raise RegistryError(f"sqlite registry {self.path}: {exc}") from exc

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._db is None:
            self._db = self._db_open()
        return fn(self._db, *args)

    def _db_open(self) -> sqlite3.Connection:
        os.makedirs(os.path.dirname(self.path) or "/", exist_ok=True)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            switch_to_wal(db)
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(sandboxes)")}
            if "change_id" not in columns:
                db.execute(ADD_CHANGE_ID)
            db.execute(CHANGE_ID_INDEX)
        except BaseException:
            db.close()
            raise
        return db

    # -- the interface --

    async def connect(self) -> None:
        await self._run(lambda db: None)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def close_db() -> None:
            db, self._db = self._db, None
            if db is not None:
                db.close()

        try:
            await asyncio.get_running_loop().run_in_executor(executor, close_db)
        finally:
            executor.shutdown(wait=False)

    async def write_many(self, records: list[SandboxRecord], ttl_s: float,
                         claims: list[bool] | None = None) -> list[Verdict]:
        """One transaction for the batch (a full push rewrites every record)."""
        flags = claims or [False] * len(records)

        def write_all(db: sqlite3.Connection) -> list[Verdict]:
            with transaction(db):
                return [self._db_write(db, r, ttl_s, c) for r, c in zip(records, flags, strict=True)]
        return await self._run(write_all)

    def _db_write(self, db: sqlite3.Connection, record: SandboxRecord, ttl_s: float, claim: bool) -> Verdict:
        now = time.time()
        row = db.execute(STORED_HEAD, (record.sandbox_id, now)).fetchone()
        stored = None if row is None else Stored(row[0], row[1], bool(row[2]), row[3] in READABLE_VERSIONS)
        verdict = decide(stored, record.node_id, record.seq, claim)
        if verdict == Verdict.STORED:
            db.execute(PUT_SANDBOX, {
                "sandbox_id": record.sandbox_id, "node_id": record.node_id, "seq": record.seq,
                "deleted": int(record.deleted), "expires_at": expiry(record, now, ttl_s), "record": record.to_json(),
            })
        return verdict

    async def refresh(self, node: NodeRecord, sandbox_ids: list[str], ttl_s: float) -> bool:
        return await self._run(self._db_refresh, node, list(sandbox_ids), ttl_s)

    def _db_refresh(self, db: sqlite3.Connection, node: NodeRecord, sandbox_ids: list[str], ttl_s: float) -> bool:
        now = time.time()
        with transaction(db):
            row = db.execute("SELECT record FROM nodes WHERE node_id = ? AND expires_at > ?",
                             (node.node_id, now)).fetchone()
            try:
                stored = None if row is None else NodeRecord.from_json(row[0])
            except ValueError as exc:
                raise NodeIdInUse.unreadable(node.node_id, exc) from exc
            if node_id_taken(stored, str(node.extra.get(INSTANCE_LABEL, ""))):
                assert stored is not None
                raise NodeIdInUse.by(node, stored, now)
            db.execute(UPSERT_NODE, (node.node_id, now + ttl_s, node.to_json()))
            db.execute(EXTEND_SANDBOXES, {"expires_at": now + ttl_s, "node_id": node.node_id, "now": now,
                                          "ids": json.dumps(sandbox_ids)})
            if now >= self._next_purge:
                self._next_purge = now + PURGE_INTERVAL_S
                db.execute("DELETE FROM sandboxes WHERE expires_at <= ?", (now,))
                db.execute("DELETE FROM nodes WHERE expires_at <= ?", (now,))
        return row is None

    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        raw = await self._run(self._db_one, f"SELECT record FROM sandboxes WHERE sandbox_id = :key AND {SERVED}",
                              sandbox_id)
        return None if raw is None else decode(SandboxRecord, raw, self.path)

    async def get_node(self, node_id: str) -> NodeRecord | None:
        raw = await self._run(self._db_one, "SELECT record FROM nodes WHERE node_id = :key AND expires_at > :now",
                              node_id)
        return None if raw is None else decode(NodeRecord, raw, self.path)

    def _db_one(self, db: sqlite3.Connection, query: str, key: str) -> str | None:
        row = db.execute(query, {"key": key, "now": time.time()}).fetchone()
        return None if row is None else row[0]

    async def node_sandboxes(self, node_id: str) -> list[str]:
        return await self._run(self._db_node_sandboxes, node_id)

    def _db_node_sandboxes(self, db: sqlite3.Connection, node_id: str) -> list[str]:
        rows = db.execute("SELECT sandbox_id FROM sandboxes WHERE node_id = ? AND deleted = 0 AND expires_at > ? "
                          "ORDER BY sandbox_id", (node_id, time.time()))
        return [r[0] for r in rows]

    async def server_time(self) -> float:
        return time.time()

    # -- for edges: poll by change_id (docs/registry.md, "Watching for changes") --

    async def changed_since(self, change_id: int, limit: int = 10_000) -> list[tuple[str, int, str | None]]:
        """Rows stored after `change_id`, oldest first: (sandbox_id, change_id, record
        JSON, or None for a tombstone, an expired row or a dead node's). Page with the last id seen."""
        return await self._run(self._db_changed_since, change_id, limit)

    def _db_changed_since(self, db: sqlite3.Connection, change_id: int,
                          limit: int) -> list[tuple[str, int, str | None]]:
        rows = db.execute(f"SELECT sandbox_id, change_id, CASE WHEN {SERVED} THEN record END "
                          "FROM sandboxes WHERE change_id > :change_id ORDER BY change_id LIMIT :limit",
                          {"now": time.time(), "change_id": change_id, "limit": limit})
        return list(rows)

    async def live_ids(self) -> set[str]:
        """Ids of every served record (live, and its node too)."""
        rows = await self._run(lambda db: db.execute(
            f"SELECT sandbox_id FROM sandboxes WHERE {SERVED}", {"now": time.time()}).fetchall())
        return {r[0] for r in rows}

    async def expiry_scan(self) -> tuple[set[str], int]:
        """(ids of records that expired, or whose node did, without a write and are not
        purged yet, how many records are served): cheaper than live_ids for noticing
        expiries in a big table."""
        def scan(db: sqlite3.Connection) -> tuple[set[str], int]:
            now = {"now": time.time()}
            expired = {r[0] for r in db.execute(
                f"SELECT sandbox_id FROM sandboxes WHERE deleted = 0 AND NOT ({SERVED})", now)}
            live = db.execute(f"SELECT COUNT(*) FROM sandboxes WHERE {SERVED}", now).fetchone()[0]
            return expired, live
        return await self._run(scan)


def switch_to_wal(db: sqlite3.Connection) -> None:
    """PRAGMA journal_mode = WAL, retried while busy for up to the busy timeout. On a
    file still in rollback mode, the switch fails at once, without calling the busy
    handler, while another connection holds the write lock (another opener creating
    the schema): two processes opening a fresh file together (agent and edge, two
    publishers) failed so in about 0.5 % of openings. Once the file is in WAL mode
    (persistent) the pragma takes no lock."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def expiry(record: SandboxRecord, now: float, ttl_s: float) -> float:
    """A tombstone and a v1 record live `ttl_s`; a v2 record while its node lives."""
    return NO_EXPIRY if record.lives_with_node else now + ttl_s


class transaction:
    """BEGIN IMMEDIATE ... COMMIT on an autocommit connection (ROLLBACK on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


R = TypeVar("R", SandboxRecord, NodeRecord)


def decode(cls: type[R], raw: str | bytes, where: str) -> R:
    try:
        return cls.from_json(raw)
    except ValueError as exc:
        raise UnreadableRecord(f"registry {where}: unreadable {cls.__name__}: {exc}") from exc

"""Agent state in SQLite (WAL). Intent is written before kernel changes.

Reconcile reads this back after a crash and repairs the kernel to match, so a
kill -9 between any two instructions leaves nothing it cannot fix.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .access import PortAccess
from .core.allocation import Allocation
from .core.rows import (
    AllocationAdded,
    AllocationDeleted,
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
    UsageClosed,
    UsageReleased,
)
from .models import AllocateSpec, EgressPolicy, ExposedPort, Limits, Protocol, SlotState
from .policy import compile_policy

log = logging.getLogger("netagent.state")

SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    idx INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS allocations (
    sandbox_id TEXT PRIMARY KEY,
    slot_idx INTEGER NOT NULL UNIQUE REFERENCES slots(idx),
    spec TEXT NOT NULL,
    policy TEXT NOT NULL,
    created_at REAL NOT NULL,
    mark_generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ports (
    sandbox_id TEXT NOT NULL REFERENCES allocations(sandbox_id) ON DELETE CASCADE,
    guest_port INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, guest_port, protocol),
    UNIQUE (protocol, host_port)
);
CREATE TABLE IF NOT EXISTS reachability (
    sandbox_id TEXT NOT NULL REFERENCES allocations(sandbox_id) ON DELETE CASCADE,
    guest_port INTEGER NOT NULL,
    reachable INTEGER NOT NULL,
    changed_at REAL NOT NULL,
    PRIMARY KEY (sandbox_id, guest_port)
);
CREATE TABLE IF NOT EXISTS egress_addresses (
    sandbox_id TEXT PRIMARY KEY REFERENCES allocations(sandbox_id) ON DELETE CASCADE,
    address TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS limits (
    sandbox_id TEXT PRIMARY KEY REFERENCES allocations(sandbox_id) ON DELETE CASCADE,
    data TEXT NOT NULL             -- models.Limits as JSON
);
CREATE TABLE IF NOT EXISTS usage (
    sandbox_id TEXT PRIMARY KEY,
    ip TEXT NOT NULL,
    slot_idx INTEGER,              -- set once released: the slot to clean after CloseUsage
    released INTEGER NOT NULL DEFAULT 0,
    data TEXT NOT NULL             -- usage/ledger.py Entry.to_json()
);
CREATE TABLE IF NOT EXISTS port_access (
    sandbox_id TEXT NOT NULL REFERENCES allocations(sandbox_id) ON DELETE CASCADE,
    guest_port INTEGER NOT NULL,
    public INTEGER NOT NULL,
    token_sha256 TEXT NOT NULL,
    host_mask TEXT NOT NULL,
    mode TEXT NOT NULL DEFAULT 'http',
    PRIMARY KEY (sandbox_id, guest_port)
);
CREATE TABLE IF NOT EXISTS paused (
    sandbox_id TEXT PRIMARY KEY REFERENCES allocations(sandbox_id) ON DELETE CASCADE,
    wake INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    data TEXT NOT NULL
);
"""


@dataclass
class Snapshot:
    slots: dict[int, SlotState]
    allocations: dict[str, Allocation]


class StateStore:
    def __init__(self, state_dir: Path):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "state.db"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # kill -9 safe; see docs/architecture.md
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        self._migrate()
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()

    def _migrate(self) -> None:
        """Columns added after a state file may have been written."""
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(allocations)")}
        if "mark_generation" not in columns:
            self.db.execute("ALTER TABLE allocations ADD COLUMN mark_generation INTEGER NOT NULL DEFAULT 0")
        if "mode" not in {row[1] for row in self.db.execute("PRAGMA table_info(port_access)")}:
            self.db.execute("ALTER TABLE port_access ADD COLUMN mode TEXT NOT NULL DEFAULT 'http'")

    def checkpoint_elsewhere(self) -> None:
        """From now on the WAL is copied into the database only by `checkpoint`,
        which the agent calls on a worker thread. By default SQLite does it
        inside whichever commit crosses 1,000 pages, with an fsync: under
        churn that was a 12-22 ms commit on the event loop every few seconds
        (docs/history/performance-log.md, "Sustained churn")."""
        self.db.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Copy the WAL into the database without waiting for readers or
        writers (PASSIVE), on a connection of its own: call it from one
        thread at a time, off the event loop."""
        with self._checkpoint_lock:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._checkpoint_lock:   # a checkpoint still running on its thread finishes first
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        self.db.close()

    def tx(self) -> Tx:
        """Writes into the transaction the caller has begun."""
        return Tx(self.db)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield Tx(self.db)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def load(self) -> Snapshot:
        slots = {idx: SlotState(s) for idx, s in self.db.execute("SELECT idx, state FROM slots")}
        ports: dict[str, dict[tuple[int, Protocol], ExposedPort]] = {}
        for sid, gport, proto, hport in self.db.execute(
                "SELECT sandbox_id, guest_port, protocol, host_port FROM ports"):
            p = ExposedPort(guest_port=gport, protocol=Protocol(proto), host_port=hport)
            ports.setdefault(sid, {})[(gport, p.protocol)] = p
        egress = dict(self.db.execute("SELECT sandbox_id, address FROM egress_addresses").fetchall())
        limits = {sid: Limits.model_validate_json(data)
                  for sid, data in self.db.execute("SELECT sandbox_id, data FROM limits")}
        access: dict[str, dict[int, PortAccess]] = {}
        for (sid, port), a in self.load_port_access().items():
            access.setdefault(sid, {})[port] = a
        paused = dict(self.db.execute("SELECT sandbox_id, wake FROM paused").fetchall())
        allocations = {}
        for sid, idx, spec, policy_json, created, generation in self.db.execute(
                "SELECT sandbox_id, slot_idx, spec, policy, created_at, mark_generation FROM allocations"):
            policy = EgressPolicy.model_validate_json(policy_json)
            allocations[sid] = Allocation(sid, idx, AllocateSpec.model_validate_json(spec), created, policy,
                                          compile_policy(policy), ports.get(sid, {}), egress_address=egress.get(sid),
                                          limits=limits.get(sid, Limits()),
                                          access=access.get(sid, {}), mark_generation=generation,
                                          paused=sid in paused, wake=bool(paused.get(sid)))
        return Snapshot(slots, allocations)

    def load_reachability(self) -> dict[tuple[str, int], tuple[bool, float]]:
        """The last known reachability of each probed (TCP) port."""
        return {(sid, port): (bool(r), changed) for sid, port, r, changed in self.db.execute(
            "SELECT sandbox_id, guest_port, reachable, changed_at FROM reachability")}

    def load_usage(self) -> list[tuple[str, str, int | None, bool, str]]:
        """(sandbox, ip, slot, released, data JSON) of every usage row."""
        return [(sid, ip, slot, bool(rel), data) for sid, ip, slot, rel, data in self.db.execute(
            "SELECT sandbox_id, ip, slot_idx, released, data FROM usage")]

    def load_port_access(self) -> dict[tuple[str, int], PortAccess]:
        return {(sid, port): PortAccess(bool(public), sha, mask, mode)
                for sid, port, public, sha, mask, mode in self.db.execute(
                    "SELECT sandbox_id, guest_port, public, token_sha256, host_mask, mode FROM port_access")}


    def events_after(self, cursor: int, limit: int = 1000) -> list[tuple[int, float, str, str, str]]:
        return list(self.db.execute("SELECT cursor, ts, type, sandbox_id, data FROM events WHERE cursor > ? "
                                    "ORDER BY cursor LIMIT ?", (cursor, limit)))

    def event_bounds(self) -> tuple[int, int]:
        lo, _ = self.db.execute("SELECT MIN(cursor), MAX(cursor) FROM events").fetchone()
        seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        return int(lo or 0), int(seq[0] if seq else 0)

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def instance_id(self) -> str:
        """A random id made once per state directory: the same across restarts, another
        on every other agent (the registry tells node id collisions apart by it)."""
        if not (value := self.get_meta("instance_id")):
            value = secrets.token_hex(8)
            self.set_meta("instance_id", value)
        return value


class Tx:
    """Writes inside one SQLite transaction."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def write(self, row: Row) -> None:
        """One row of a planned change."""
        match row:
            case SlotSet(slot, state):
                self.set_slot(slot, state)
            case SlotDeleted(slot):
                self.delete_slot(slot)
            case AllocationAdded(rec):
                self.add_allocation(rec)
            case AllocationDeleted(rec):
                self.delete_allocation(rec.sandbox_id)
            case PolicySet(sid, policy, _, generation):
                self.set_policy(sid, policy, generation)
            case PortAdded(sid, port):
                self.add_port(sid, port)
            case PortDeleted(sid, port):
                self.delete_port(sid, port)
            case PortAccessSet(sid, guest_port, access):
                self.db.execute("INSERT OR REPLACE INTO port_access VALUES (?, ?, ?, ?, ?, ?)",
                                (sid, guest_port, int(access.public), access.token_sha256, access.host_mask,
                                 access.mode))
            case PausedSet(sid, paused, wake):
                if paused:
                    self.db.execute("INSERT OR REPLACE INTO paused VALUES (?, ?)", (sid, int(wake)))
                else:
                    self.db.execute("DELETE FROM paused WHERE sandbox_id=?", (sid,))
            case ReachabilitySet(sid, guest_port, reachable, changed_at):
                self.set_reachability(sid, guest_port, reachable, changed_at)
            case EgressSet(sid, address):
                self.set_egress(sid, address)
            case LimitsSet(sid, limits):
                self.set_limits(sid, limits)
            case UsageReleased(sid, ip, slot):
                self.db.execute("INSERT INTO usage(sandbox_id, ip, slot_idx, released, data) VALUES (?, ?, ?, 1, '{}') "
                                "ON CONFLICT(sandbox_id) DO UPDATE SET released=1, slot_idx=excluded.slot_idx",
                                (sid, ip, slot))
            case UsageClosed(sid):
                self.db.execute("DELETE FROM usage WHERE sandbox_id=?", (sid,))
            case MetaSet(key, value):
                self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def save_usage(self, entries: list[tuple[str, str, str]]) -> None:
        """(sandbox, ip, data JSON) of open ledger entries; a released row keeps its flag."""
        self.db.executemany("INSERT INTO usage(sandbox_id, ip, data) VALUES (?, ?, ?) "
                            "ON CONFLICT(sandbox_id) DO UPDATE SET data=excluded.data", entries)

    def set_limits(self, sandbox_id: str, limits: Limits) -> None:
        self.db.execute("INSERT OR REPLACE INTO limits(sandbox_id, data) VALUES (?, ?)",
                        (sandbox_id, limits.model_dump_json()))

    def set_egress(self, sandbox_id: str, address: str | None) -> None:
        if address is None:
            self.db.execute("DELETE FROM egress_addresses WHERE sandbox_id=?", (sandbox_id,))
        else:
            self.db.execute("INSERT OR REPLACE INTO egress_addresses(sandbox_id, address) VALUES (?, ?)",
                            (sandbox_id, address))

    def set_slot(self, idx: int, state: SlotState) -> None:
        self.db.execute("INSERT INTO slots(idx, state, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT(idx) DO UPDATE SET state=excluded.state, updated_at=excluded.updated_at",
                        (idx, state.value, time.time()))

    def delete_slot(self, idx: int) -> None:
        self.db.execute("DELETE FROM slots WHERE idx=?", (idx,))

    def add_allocation(self, rec: Allocation) -> None:
        self.db.execute("INSERT INTO allocations(sandbox_id, slot_idx, spec, policy, created_at, mark_generation) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (rec.sandbox_id, rec.slot, rec.spec.model_dump_json(),
                                                      rec.policy.model_dump_json(), rec.created_at,
                                                      rec.mark_generation))
        if rec.egress_address:
            self.set_egress(rec.sandbox_id, rec.egress_address)
        if rec.limits.limited:
            self.set_limits(rec.sandbox_id, rec.limits)

    def set_policy(self, sandbox_id: str, policy: EgressPolicy, mark_generation: int) -> None:
        self.db.execute("UPDATE allocations SET policy=?, mark_generation=? WHERE sandbox_id=?",
                        (policy.model_dump_json(), mark_generation, sandbox_id))

    def add_event(self, ts: float, type_: str, sandbox_id: str, data: str) -> int:
        cur = self.db.execute("INSERT INTO events(ts, type, sandbox_id, data) VALUES (?, ?, ?, ?)",
                              (ts, type_, sandbox_id, data))
        return int(cur.lastrowid or 0)

    def trim_events(self, keep: int) -> None:
        self.db.execute("DELETE FROM events WHERE cursor <= (SELECT MAX(cursor) FROM events) - ?", (keep,))

    def delete_allocation(self, sandbox_id: str) -> None:
        self.db.execute("DELETE FROM allocations WHERE sandbox_id=?", (sandbox_id,))

    def add_port(self, sandbox_id: str, port: ExposedPort) -> None:
        self.db.execute("INSERT INTO ports(sandbox_id, guest_port, protocol, host_port) VALUES (?, ?, ?, ?)",
                        (sandbox_id, port.guest_port, port.protocol.value, port.host_port))

    def delete_port(self, sandbox_id: str, port: ExposedPort) -> None:
        self.db.execute("DELETE FROM ports WHERE sandbox_id=? AND guest_port=? AND protocol=?",
                        (sandbox_id, port.guest_port, port.protocol.value))
        if port.protocol == Protocol.TCP:
            self.db.execute("DELETE FROM reachability WHERE sandbox_id=? AND guest_port=?",
                            (sandbox_id, port.guest_port))

    def set_reachability(self, sandbox_id: str, guest_port: int, reachable: bool, changed_at: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO reachability(sandbox_id, guest_port, reachable, changed_at) "
                        "VALUES (?, ?, ?, ?)", (sandbox_id, guest_port, int(reachable), changed_at))


def dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


async def checkpoints(store: StateStore, every_s: float = 1.0) -> None:
    """Forever (cancel to stop): the WAL copied into the database every
    `every_s`, on a worker thread (StateStore.checkpoint_elsewhere says why)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(store.checkpoint)
        except sqlite3.Error:
            log.exception("state checkpoint failed (retried)")

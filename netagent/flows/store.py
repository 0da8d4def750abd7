"""The flow store: an append-only SQLite file of its own (flows.db, beside
state.db) and an optional JSON-lines log, written by one thread in batches so
that recording never runs on the event loop nor contends with the committer's
database. Retention by age and by record count, trimmed as the writer goes.

Beside the records, the set of live sandbox flows (table `live`, kept from
conntrack's new and destroy events): what the next start compares with
conntrack to find the flows that ended while no agent ran.

Writes may be queued from any thread; reads open their own connection."""
from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..workers import name_os_thread
from .records import FlowRecord

log = logging.getLogger("netagent.flows")
COLUMNS = tuple(f.name for f in fields(FlowRecord))
BATCH_WAIT_S = 0.2      # a batch gathers what came within this long
TRIM_EVERY_S = 10.0
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS flows (id INTEGER PRIMARY KEY, {", ".join(COLUMNS)}, UNIQUE(key));
CREATE INDEX IF NOT EXISTS flows_by_sandbox ON flows (sandbox_id, "end");
CREATE INDEX IF NOT EXISTS flows_by_end ON flows ("end");
CREATE TABLE IF NOT EXISTS live ({", ".join(COLUMNS)}, PRIMARY KEY(key));
"""
_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
_INSERT = f"INSERT OR IGNORE INTO flows ({_QUOTED}) VALUES ({', '.join('?' * len(COLUMNS))})"
_LIVE = f"INSERT OR REPLACE INTO live ({_QUOTED}) VALUES ({', '.join('?' * len(COLUMNS))})"


@dataclass(frozen=True)
class Retention:
    max_age_s: float
    max_records: int
    log_path: Path | None = None    # JSON-lines log (None: none)
    log_max_bytes: int = 100 << 20  # rotated to <path>.1 past this size


class FlowStore:
    def __init__(self, path: Path, retention: Retention):
        self.path = path
        self.retention = retention
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Condition()
        self._pending = 0
        self.written = 0            # records stored (duplicates of a stored key not counted)
        self.failures = 0
        self._last_trim = 0.0
        path.parent.mkdir(parents=True, exist_ok=True)
        # every tenant's destinations: root's only (SQLite gives its -wal and -shm the same mode)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    # ---- writing (any thread) ----------------------------------------------
    # Each call queues one operation; the writer applies a batch of them in
    # order in one transaction: ("add", records), ("open", record),
    # ("close", entry id), ("live", records: replace the live set),
    # ("upsert", records: refresh live rows), ("trim", now).

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="netagent-flow-writer", daemon=True)
        self._thread.start()

    def add(self, records: Sequence[FlowRecord]) -> None:
        if records:
            self._put(("add", list(records)))

    def opened(self, record: FlowRecord) -> None:
        """A flow began (its record as of now, keyed by entry id): into the live set."""
        self._put(("open", record))

    def closed(self, entry_id: str) -> None:
        self._put(("close", entry_id))

    def save_live(self, records: Sequence[FlowRecord]) -> None:
        """Replace the live set (at start: what conntrack holds now)."""
        self._put(("live", list(records)))

    def refresh_live(self, records: Sequence[FlowRecord]) -> None:
        """Newer counters for flows of the live set (at stop)."""
        self._put(("upsert", list(records)))

    def _put(self, item: tuple[str, object]) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(item)

    @property
    def pending(self) -> int:
        return self._pending

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is written (False: timed out)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        name_os_thread("netagent-flowwr")
        db = self._connect()
        try:
            while (item := self._queue.get()) is not None:
                batch = [item]
                deadline = time.monotonic() + BATCH_WAIT_S
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        more = self._queue.get(timeout=left)
                    except queue.Empty:
                        break
                    if more is None:
                        self._queue.put(None)
                        break
                    batch.append(more)
                try:
                    self._write(db, batch)
                    self._trim(db)
                except Exception:   # a full disk: keep going, say so
                    self.failures += 1
                    log.exception("flow store: a batch of %d operations could not be written", len(batch))
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()
        finally:
            db.close()

    def _write(self, db: sqlite3.Connection, batch: list[tuple[str, Any]]) -> None:
        stored: list[FlowRecord] = []
        db.execute("BEGIN")
        try:
            for op, arg in batch:
                if op == "add":
                    stored += [r for r in arg if db.execute(_INSERT, _row(r)).rowcount]
                elif op == "open":
                    db.execute(_LIVE, _row(arg))
                elif op == "close":
                    db.execute("DELETE FROM live WHERE key = ?", (arg,))
                elif op in ("live", "upsert"):
                    if op == "live":
                        db.execute("DELETE FROM live")
                    db.executemany(_LIVE, [_row(r) for r in arg])
                elif op == "trim":
                    self._last_trim = 0.0
                    self._trim(db, arg)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.written += len(stored)
        if self.retention.log_path is not None and stored:
            self._append_log(stored)

    def _append_log(self, records: list[FlowRecord]) -> None:
        path = self.retention.log_path
        assert path is not None
        text = "".join(json.dumps({"ts": r.end, "event": "flow", **r.as_dict()}, separators=(",", ":")) + "\n"
                       for r in records)
        try:
            if path.stat().st_size + len(text) > self.retention.log_max_bytes:
                os.replace(path, path.with_name(path.name + ".1"))
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(text)

    def _trim(self, db: sqlite3.Connection, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if now - self._last_trim < TRIM_EVERY_S:
            return
        self._last_trim = now
        db.execute('DELETE FROM flows WHERE "end" < ?', (now - self.retention.max_age_s,))
        (last,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM flows").fetchone()
        db.execute("DELETE FROM flows WHERE id <= ?", (last - self.retention.max_records,))

    def trim_now(self, now: float | None = None) -> None:
        """Apply retention at once (on the writer thread, like any write)."""
        self._put(("trim", now))

    # ---- reading (any thread) ----------------------------------------------

    def query(self, sandbox_id: str, since: float = 0.0, until: float | None = None,
              limit: int = 1000) -> list[FlowRecord]:
        """The sandbox's flows that ended in [since, until], oldest first, at most `limit`."""
        sql = (f'SELECT {_QUOTED} FROM flows WHERE sandbox_id = ? AND "end" >= ? AND "end" <= ? '
               'ORDER BY "end", id LIMIT ?')
        db = self._connect()
        try:
            rows = db.execute(sql, (sandbox_id, since, float("inf") if until is None else until, limit)).fetchall()
        finally:
            db.close()
        return [_record(row) for row in rows]

    def load_live(self) -> list[FlowRecord]:
        db = self._connect()
        try:
            return [_record(row) for row in db.execute(f"SELECT {_QUOTED} FROM live")]
        finally:
            db.close()

    def count(self) -> int:
        db = self._connect()
        try:
            return int(db.execute("SELECT COUNT(*) FROM flows").fetchone()[0])
        finally:
            db.close()


def _row(r: FlowRecord) -> tuple[object, ...]:
    return tuple(getattr(r, c) for c in COLUMNS)


def _record(row: tuple[object, ...]) -> FlowRecord:
    values = dict(zip(COLUMNS, row, strict=True))
    values["while_down"] = bool(values["while_down"])
    return FlowRecord(**values)  # type: ignore[arg-type]

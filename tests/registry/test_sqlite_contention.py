"""Several processes open one SQLite registry file (an agent and its edge, two
agents of a test): whoever comes first must not make the others fail."""
from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from netagent.registry import open_registry


async def test_opening_a_fresh_file_waits_for_another_connections_write_lock(tmp_path: Path) -> None:
    # Another opener holds the write lock on the file while it is still in rollback
    # mode: SQLite fails the WAL switch at once there, busy timeout or not.
    path = tmp_path / "registry.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE IF NOT EXISTS being_created (x)")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    reg = open_registry(f"sqlite://{path}")
    try:
        await reg.connect()
        assert await reg.get_sandbox("sbx-1") is None
    finally:
        release.join()
        other.close()
        await reg.close()
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


async def test_many_registries_opening_one_fresh_file_together_all_succeed(tmp_path: Path) -> None:
    for round_ in range(20):
        url = f"sqlite://{tmp_path / f'registry-{round_}.db'}"
        registries = [open_registry(url) for _ in range(4)]
        try:
            await asyncio.gather(*(reg.connect() for reg in registries))
        finally:
            await asyncio.gather(*(reg.close() for reg in registries))

"""The state file's WAL is copied back by the agent's checkpoint thread, not
inside a commit on the event loop (state.py, `checkpoint_elsewhere`)."""
from __future__ import annotations

import asyncio
import sqlite3

from netagent.state import StateStore, checkpoints


def wal_frames_after_one_more_write(store: StateStore) -> int:
    """Frames in the WAL once one small transaction is added: a fully copied
    WAL starts over from its first frame, an uncopied one keeps growing."""
    store.set_meta("one-more", "x")
    other = sqlite3.connect(store.path)
    try:
        _, frames, _ = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        other.close()
    return int(frames)


def write_pages(store: StateStore, n: int) -> None:
    for i in range(n):
        store.set_meta(f"k{i}", "v" * 3000)


def test_commits_do_not_checkpoint_and_checkpoint_copies_the_wal(tmp_path):
    store = StateStore(tmp_path)
    store.checkpoint_elsewhere()
    write_pages(store, 1500)   # past SQLite's automatic checkpoint at 1,000 pages
    assert wal_frames_after_one_more_write(store) > 1500

    store = StateStore(tmp_path / "b")
    store.checkpoint_elsewhere()
    write_pages(store, 1500)
    store.checkpoint()
    assert wal_frames_after_one_more_write(store) < 10
    store.close()


async def test_the_agents_checkpoint_task_copies_the_wal(tmp_path):
    store = StateStore(tmp_path)
    store.checkpoint_elsewhere()
    write_pages(store, 1500)
    task = asyncio.create_task(checkpoints(store, every_s=0.01))
    try:
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert wal_frames_after_one_more_write(store) < 10
    store.close()

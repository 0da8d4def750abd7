"""The map files on disk follow the control plane's mirror (issue 27): each shard's
file is the mirror's shard, written whole (tmp + fsync + rename), and a busy shard is
rewritten at most once per interval."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from netagent.edge.haconfig import shard_map
from netagent.edge.mapfiles import MapFileWriter, render_map, write_atomically
from netagent.edge.maps import MapMirror, record_entries, shard_of
from netagent.registry import PortRecord, SandboxRecord


def entries(sid: str, host_port: int = 30001) -> dict[str, str]:
    return record_entries(SandboxRecord(sid, "n1", "10.0.0.7", 1, 0.0,
                                        (PortRecord(3000, "tcp", host_port, True, 0.0, 0.0),)))


def parse(data: bytes) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in data.decode().splitlines())


def test_shard_entries_follow_changes_as_a_reset_would() -> None:
    mirror = MapMirror(shards=4)
    mirror.reset({f"s{i}": entries(f"s{i}") for i in range(40)})
    for i in range(0, 40, 3):
        mirror.replace(f"s{i}", {})                       # gone
    mirror.replace("s1", entries("s1", 40000))            # changed
    mirror.replace("new", entries("new"))                 # added
    fresh = MapMirror(shards=4)
    want = fresh.reset(dict(mirror.by_sandbox))
    assert {i: dict(mirror.shard_entries(i)) for i in range(4)} == want == mirror.sharded()
    assert dict(mirror.shard_entries(shard_of("s1", 4)))["s1/3000"] == "10.0.0.7|40000||"
    assert "s0" not in dict(mirror.shard_entries(shard_of("s0", 4)))


def test_a_file_is_replaced_whole(tmp_path: Path) -> None:
    path = str(tmp_path / "s000.map")
    write_atomically({path: b"old 1\n"})
    inode = os.stat(path).st_ino
    write_atomically({path: render_map([("a", "1"), ("a/3000", "10.0.0.7|1||")])})
    assert Path(path).read_bytes() == b"a 1\na/3000 10.0.0.7|1||\n"
    assert os.stat(path).st_ino != inode                 # a new file renamed over, not rewritten in place
    assert sorted(os.listdir(tmp_path)) == ["s000.map"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_retries(tmp_path: Path) -> None:
    mirror = MapMirror(shards=2)
    mirror.reset({"a": entries("a")})
    writer = MapFileWriter(str(tmp_path / "missing"), mirror.shard_entries)
    writer.mark([0, 1])
    with pytest.raises(OSError):
        asyncio.run(writer.flush())
    assert writer.dirty == {0, 1} and writer.writes == 0


async def test_the_files_hold_the_mirror_after_a_flush(tmp_path: Path) -> None:
    mirror = MapMirror(shards=4)
    mirror.reset({f"s{i}": entries(f"s{i}") for i in range(20)})
    writer = MapFileWriter(str(tmp_path), mirror.shard_entries)
    writer.mark(range(4))
    await writer.flush()
    mirror.replace("s3", {})
    writer.mark([shard_of("s3", 4)])
    await writer.flush()
    on_disk: dict[str, str] = {}
    for i in range(4):
        on_disk |= parse(Path(shard_map(str(tmp_path), i)).read_bytes())
    assert on_disk == {k: v for e in mirror.by_sandbox.values() for k, v in e.items()}
    assert "s3" not in on_disk and writer.writes == 5 and not writer.dirty


async def test_a_busy_shard_is_written_at_most_once_per_interval(tmp_path: Path) -> None:
    rounds: list[float] = []         # when each write round took the shard's contents

    class Recording(MapFileWriter):
        def render_dirty(self) -> dict[int, bytes]:
            rounds.append(time.monotonic())
            return super().render_dirty()

    mirror = MapMirror(shards=1)
    writer = Recording(str(tmp_path), mirror.shard_entries, interval_s=0.1)
    task = asyncio.create_task(writer.run())
    try:
        changes = 0
        while len(rounds) < 4:                           # a change every ms until four write rounds
            mirror.replace(f"s{changes}", entries(f"s{changes}"))
            writer.mark([0])
            changes += 1
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    gaps = [b - a for a, b in zip(rounds, rounds[1:], strict=False)]
    assert min(gaps) >= 0.1 and changes > len(rounds)
    await writer.flush()
    assert len(parse(Path(shard_map(str(tmp_path), 0)).read_bytes())) == 2 * changes

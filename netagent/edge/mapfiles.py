"""Keep the shard map files on disk equal to what the control plane committed, so a
reloaded or restarted HAProxy (which loads them as they are) starts with current routing.

Each file is replaced atomically (write a temporary file, fsync, rename, fsync the
directory): a crash leaves every file whole, old or new. Writes are coalesced: a
changed shard is written at once if none was written within the last `interval_s`,
else at the end of that interval, so a shard is rewritten at most once per interval
however many changes it gets, and the files lag the runtime state by at most
`interval_s` plus one write (docs/edge.md, "Map files on disk").
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping

from .haconfig import shard_map

log = logging.getLogger("netagent.edge")

DEFAULT_INTERVAL_S = 1.0


def render_map(entries: Iterable[tuple[str, str]]) -> bytes:
    """A map file: one `key value` line per entry (HAProxy's map file format)."""
    return "".join(f"{key} {value}\n" for key, value in entries).encode()


def write_atomically(files: Mapping[str, bytes]) -> None:
    """Replace each file whole: tmp + fsync + rename, then one fsync per directory."""
    dirs = set()
    for path, data in files.items():
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dirs.add(os.path.dirname(path) or ".")
    for d in dirs:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class MapFileWriter:
    """Dirty shards in, coalesced atomic rewrites out. `shard_entries(shard)` gives the
    shard's current entries (the control plane's mirror); the files follow it."""

    def __init__(self, map_dir: str, shard_entries: Callable[[int], Iterable[tuple[str, str]]],
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.map_dir = map_dir
        self.shard_entries = shard_entries
        self.interval_s = interval_s
        self.dirty: set[int] = set()
        self.writes = 0                 # files written
        self.bytes_written = 0
        self._wake = asyncio.Event()
        self._last_round = -float("inf")
        self._inflight: asyncio.Future[None] | None = None

    def mark(self, shards: Iterable[int]) -> None:
        before = len(self.dirty)
        self.dirty.update(shards)
        if len(self.dirty) != before:
            self._wake.set()

    def render_dirty(self) -> dict[int, bytes]:
        """The dirty shards' file contents, as of now (taken on the event loop)."""
        dirty, self.dirty = sorted(self.dirty), set()
        self._wake.clear()
        return {shard: render_map(self.shard_entries(shard)) for shard in dirty}

    async def flush(self) -> None:
        """Write every dirty shard now (also at shutdown: nothing committed is lost)."""
        await self._settle()
        rendered = self.render_dirty()
        if not rendered:
            return
        self._last_round = time.monotonic()
        self._inflight = asyncio.ensure_future(self._write(rendered))
        await asyncio.shield(self._inflight)     # cancelled meanwhile: the write still ends, and the next flush waits

    async def _write(self, rendered: dict[int, bytes]) -> None:
        files = {shard_map(self.map_dir, shard): data for shard, data in rendered.items()}
        try:
            await asyncio.to_thread(write_atomically, files)
        except OSError:
            self.mark(rendered)   # written again next round
            raise
        self.writes += len(files)
        self.bytes_written += sum(map(len, files.values()))

    async def _settle(self) -> None:
        """Wait for a write a cancelled flush left running (never two writers of one file)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await asyncio.wait([task])
            if not task.cancelled():
                task.exception()      # its failure re-marked the shards; retrieved here

    async def run(self) -> None:
        """Until cancelled: at most one write round per interval, as soon as allowed."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(max(0.0, self._last_round + self.interval_s - time.monotonic()))
            try:
                await self.flush()
            except OSError as exc:
                log.warning("edge: writing the map files under %s failed: %s; retrying", self.map_dir, exc)
                self._last_round = time.monotonic()

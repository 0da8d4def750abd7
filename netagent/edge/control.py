"""The edge's control plane: keep HAProxy's maps, and the map files on disk, equal
to the registry.

A full sync (at start, after a lost feed) reads the registry into the mirror and
loads the mirror into HAProxy; in between, each registry change becomes the few map
ops it needs. A new HAProxy process (a reload, a restart), seen by its pid within
WATCH_S, gets the mirror loaded at once, without reading the registry again: it
already loaded the map files, which follow the mirror (mapfiles.py), and until then
it answers 503 rather than 404 for what it lacks (the flag map, docs/edge.md). It
never reloads HAProxy. While the registry is unreachable HAProxy keeps serving the
last state, and a new HAProxy process still gets it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from .feeds import Change, FeedLost
from .mapfiles import DEFAULT_INTERVAL_S, MapFileWriter
from .maps import MapMirror, MapOp
from .metrics import EdgeMetrics
from .runtime import HAProxyError, HAProxyRuntime, haproxy_pid

log = logging.getLogger("netagent.edge")

RETRY_S = 0.5
WATCH_S = 0.05       # how often the admin socket is asked which process owns it


class Feed(Protocol):
    async def snapshot(self) -> list[Change]: ...
    async def changes(self) -> list[Change]: ...
    async def close(self) -> None: ...


def ops_for(mirror: MapMirror, changes: list[Change]) -> list[MapOp]:
    return [op for change in changes for op in mirror.replace(change.sandbox_id, change.entries)]


class EdgeControl:
    def __init__(self, feed: Feed, runtime: HAProxyRuntime, shards: int,
                 on_sync: Callable[[int, float], None] | None = None,
                 map_write_interval_s: float = DEFAULT_INTERVAL_S, metrics: EdgeMetrics | None = None) -> None:
        self.feed = feed
        self.runtime = runtime
        self.mirror = MapMirror(shards)
        self.files = MapFileWriter(runtime.map_dir, self.mirror.shard_entries, map_write_interval_s)
        self.on_sync = on_sync
        self.metrics = metrics or EdgeMetrics()
        self.full_syncs = 0
        self.pushes = 0                     # times the mirror was loaded into HAProxy
        self.synced = asyncio.Event()       # HAProxy holds the mirror, and the mirror follows the registry
        self.haproxy_pid = ""               # the process that holds the mirror ("": none known)
        self.new_process_seen_at = 0.0      # monotonic time the watcher last saw a new pid
        self._have_state = False            # the mirror came from a registry snapshot
        self._feed_ok = False
        self._pushing = False
        self._new_process = asyncio.Event()
        self._retry_push_at = 0.0

    async def run(self) -> None:
        helpers = [asyncio.create_task(self.files.run()), asyncio.create_task(self._watch())]
        try:
            while True:
                try:
                    await self.full_sync()
                    await self._follow()
                except FeedLost as exc:
                    self._feed_ok = False
                    self.synced.clear()
                    self.metrics.lost()
                    log.warning("edge: %s; full resync in %.1f s", exc, RETRY_S)
                    await self._serve_haproxy_for(RETRY_S)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            try:
                await self.files.flush()     # what was committed reaches the disk
            except OSError as exc:
                log.warning("edge: writing the map files failed at exit: %s", exc)

    async def full_sync(self) -> None:
        started = time.monotonic()
        snapshot = await self.feed.snapshot()
        self.mirror.reset({c.sandbox_id: c.entries for c in snapshot})
        self._have_state = self._feed_ok = True
        self.files.mark(range(self.mirror.shards))
        pushed = await self._push()
        self.full_syncs += 1
        elapsed = time.monotonic() - started
        log.info("edge: full sync of %d records in %.3f s", len(snapshot), elapsed)
        if pushed:
            self.metrics.full_sync(len(self.mirror.by_sandbox))
        if self.on_sync:
            self.on_sync(len(snapshot), elapsed)

    async def _follow(self) -> None:
        """Apply registry changes; load the mirror into a new HAProxy process as soon as
        one is seen. The feed read is never cancelled for that (no change is dropped)."""
        pending: asyncio.Future[list[Change]] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(self.feed.changes())
                new_process = asyncio.ensure_future(self._new_process.wait())
                try:
                    await asyncio.wait({pending, new_process}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    new_process.cancel()
                if self._new_process.is_set():
                    await self._push()
                if pending.done():
                    changes, pending = pending.result(), None
                    ops = ops_for(self.mirror, changes)
                    self.files.mark({op.shard for op in ops})
                    await self._apply(ops)
                    if self.synced.is_set():
                        self.metrics.applied(len(ops), len(self.mirror.by_sandbox))
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    async def _serve_haproxy_for(self, seconds: float) -> None:
        """Wait, still loading the last state into a new HAProxy process (registry outage)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._new_process.wait()
            if self._new_process.is_set():
                await self._push()

    async def _apply(self, ops: list[MapOp]) -> None:
        try:
            await self.runtime.apply(ops)
        except HAProxyError as exc:       # the mirror (and the files) keep the ops; the next push loads them
            self._lost_haproxy(exc)

    async def _push(self) -> bool:
        """Load the whole mirror into the process that owns the admin socket now, and set its flag."""
        self._new_process.clear()
        if not self._have_state:
            return False        # nothing to give it: the full sync will
        self._pushing = True
        try:
            await self.runtime.connect()
            pid = (await self.runtime.info()).get("Pid", "")
            await self.runtime.load_all(self.mirror.sharded())
        except HAProxyError as exc:
            self._lost_haproxy(exc)
            return False
        finally:
            self._pushing = False
        if pid != self.haproxy_pid:
            log.info("edge: haproxy pid %s loaded %d sandboxes", pid, len(self.mirror.by_sandbox))
        self.haproxy_pid = pid
        self.pushes += 1
        if self._feed_ok:
            self.synced.set()
            self.metrics.in_sync()
        return True

    def _lost_haproxy(self, exc: Exception) -> None:
        log.warning("edge: %s; loading the maps again when haproxy answers", exc)
        self.synced.clear()
        self.metrics.lost()
        self.haproxy_pid = ""              # the watcher asks for a push once any process answers
        self._retry_push_at = time.monotonic() + RETRY_S

    async def _watch(self) -> None:
        """A reloaded or restarted HAProxy loaded its map files, not the runtime state: notice
        it by the pid on a fresh connection (ours may still reach an old process)."""
        while True:
            await asyncio.sleep(WATCH_S)
            if self._pushing or self._new_process.is_set() or time.monotonic() < self._retry_push_at:
                continue
            pid = await haproxy_pid(self.runtime.socket_path)
            if pid and pid != self.haproxy_pid and not self._pushing:
                log.info("edge: haproxy pid %s -> %s", self.haproxy_pid or "-", pid)
                self.new_process_seen_at = time.monotonic()
                self._new_process.set()

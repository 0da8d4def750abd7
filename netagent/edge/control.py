"""The edge's control plane: keep HAProxy's maps equal to the registry.

Full sync at start, after a lost feed and after HAProxy restarted (its pid
changed); in between, each registry change becomes the few map ops it needs.
It never reloads HAProxy. While the registry is unreachable HAProxy keeps
serving the last state it was given.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from .feeds import Change, FeedLost
from .maps import MapMirror, MapOp
from .metrics import EdgeMetrics
from .runtime import HAProxyError, HAProxyRuntime

log = logging.getLogger("netagent.edge")

RETRY_S = 0.5
PID_CHECK_S = 1.0


class Feed(Protocol):
    async def snapshot(self) -> list[Change]: ...
    async def changes(self) -> list[Change]: ...
    async def close(self) -> None: ...


def ops_for(mirror: MapMirror, changes: list[Change]) -> list[MapOp]:
    return [op for change in changes for op in mirror.replace(change.sandbox_id, change.entries)]


class EdgeControl:
    def __init__(self, feed: Feed, runtime: HAProxyRuntime, shards: int,
                 on_sync: Callable[[int, float], None] | None = None, metrics: EdgeMetrics | None = None) -> None:
        self.feed = feed
        self.runtime = runtime
        self.mirror = MapMirror(shards)
        self.on_sync = on_sync
        self.metrics = metrics or EdgeMetrics()
        self.full_syncs = 0
        self.synced = asyncio.Event()
        self._haproxy_pid = ""
        self._next_pid_check = 0.0

    async def run(self) -> None:
        while True:
            try:
                await self.full_sync()
                while True:
                    changes = await self.feed.changes()
                    ops = ops_for(self.mirror, changes)
                    await self.runtime.apply(ops)
                    await self._check_haproxy()
                    self.metrics.applied(len(ops), len(self.mirror.by_sandbox))
            except (FeedLost, HAProxyError) as exc:
                self.synced.clear()
                self.metrics.lost()
                log.warning("edge: %s; full resync in %.1f s", exc, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def full_sync(self) -> None:
        started = time.monotonic()
        snapshot = await self.feed.snapshot()
        await self.runtime.connect()
        self._haproxy_pid = (await self.runtime.info()).get("Pid", "")
        shards = self.mirror.reset({c.sandbox_id: c.entries for c in snapshot})
        await self.runtime.load_all(shards)
        self.full_syncs += 1
        self._next_pid_check = time.monotonic() + PID_CHECK_S
        elapsed = time.monotonic() - started
        log.info("edge: full sync of %d records in %.3f s", len(snapshot), elapsed)
        self.metrics.full_sync(len(self.mirror.by_sandbox))
        if self.on_sync:
            self.on_sync(len(snapshot), elapsed)
        self.synced.set()

    async def _check_haproxy(self) -> None:
        """A restarted HAProxy loaded its map files, not our state: notice it by pid
        on a fresh connection (ours may still reach an old process)."""
        if time.monotonic() < self._next_pid_check:
            return
        self._next_pid_check = time.monotonic() + PID_CHECK_S
        probe = HAProxyRuntime(self.runtime.socket_path, self.runtime.map_dir)
        try:
            pid = (await probe.info()).get("Pid", "")
        finally:
            await probe.close()
        if pid != self._haproxy_pid:
            raise HAProxyError(f"haproxy restarted (pid {self._haproxy_pid} -> {pid})")

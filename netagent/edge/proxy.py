"""The Python edge server (the HAProxy edge's benchmark baseline): accept client
connections, one task each (connection.py), and look each request's sandbox up
in the registry, reusing an answer for at most cache_ttl_s.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from ..registry import Registry, SandboxRecord
from .connection import ClientConnection
from .http1 import MAX_HEAD
from .routing import Router

log = logging.getLogger("netagent.edge")

CACHE_MAX_ENTRIES = 10_000


@dataclass
class EdgeConfig:
    domain: str
    shared_host: str | None = None
    connect_timeout_s: float = 3.0      # upstream TCP connect; past it: 504
    idle_timeout_s: float = 75.0        # a client connection waiting for its next request
    upload_grace_s: float = 1.0         # after a response, how long an unfinished upload may still run
    splice_linger_s: float = 10.0       # after one side of an upgraded connection closes
    trust_forwarded: bool = False       # keep/append incoming X-Forwarded-* (a trusted proxy in front)
    cache_ttl_s: float = 0.25           # reuse a registry answer this long (0: ask every time; at most 0.25)

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_ttl_s <= 0.25:
            raise ValueError("cache_ttl_s must be between 0 and 0.25 s")


class EdgeServer:
    def __init__(self, registry: Registry, config: EdgeConfig) -> None:
        self.registry = registry
        self.config = config
        self.router = Router(config.domain, config.shared_host)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._cache: dict[str, tuple[float, SandboxRecord | None]] = {}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._on_client, host, port, limit=MAX_HEAD)
        return self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def lookup(self, sandbox_id: str) -> SandboxRecord | None:
        """The registry's record, or a copy at most cache_ttl_s old (absent ones too)."""
        ttl = self.config.cache_ttl_s
        if ttl <= 0:
            return await self.registry.get_sandbox(sandbox_id)
        now = time.monotonic()
        hit = self._cache.get(sandbox_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await self.registry.get_sandbox(sandbox_id)
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
        self._cache[sandbox_id] = (now + ttl, record)
        return record

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        conn = ClientConnection(self.config, self.router, self.lookup, reader, writer)
        try:
            await conn.run()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("edge connection failed")
        finally:
            self._clients.discard(task)
            conn.close()

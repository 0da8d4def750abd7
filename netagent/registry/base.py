"""The registry interface. Backends: sqlite.py (one host) and redis.py (shared).

Every record lives for `ttl_s` after its last write or refresh; an expired
record reads as absent. The agent refreshes its node and sandbox records well
inside the TTL, so a dead agent's records (and their `reachable=true`) vanish
at most `ttl_s` after its last refresh.
"""
from __future__ import annotations

import abc

from .records import NodeRecord, SandboxRecord


class RegistryError(Exception):
    """The registry could not be reached or refused the operation."""


class Registry(abc.ABC):
    url: str

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def put_sandbox(self, record: SandboxRecord, ttl_s: float) -> bool:
        """Store `record` (a tombstone too) if its seq is higher than the stored
        one's. True if stored, False if a newer write was already there."""

    async def put_many(self, records: list[SandboxRecord], ttl_s: float) -> list[bool]:
        """put_sandbox for each record, in order; backends batch it."""
        return [await self.put_sandbox(r, ttl_s) for r in records]

    @abc.abstractmethod
    async def refresh(self, node: NodeRecord, sandbox_ids: list[str], ttl_s: float) -> None:
        """Heartbeat: write the node record and extend the TTL of the node's
        sandbox records (only those still owned by this node)."""

    @abc.abstractmethod
    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        """The live record, or None if absent, expired or a tombstone."""

    @abc.abstractmethod
    async def get_node(self, node_id: str) -> NodeRecord | None: ...

    @abc.abstractmethod
    async def node_sandboxes(self, node_id: str) -> list[str]:
        """Ids of the live (non-tombstone) sandbox records owned by node_id."""

    @abc.abstractmethod
    async def server_time(self) -> float:
        """The registry's clock (unix seconds), to measure skew."""

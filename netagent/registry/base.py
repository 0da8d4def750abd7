"""The registry interface. Backends: sqlite.py (one host) and redis.py (shared).

A node record lives for `ttl_s` after its last heartbeat (`refresh`). A
sandbox record (schema v2) is written only when it changes and is served while
its node's record lives, so a dead agent's records (and their `reachable=true`)
vanish at most `ttl_s` after its last heartbeat. Tombstones (and v1 records of
older agents) live `ttl_s` after their write. docs/registry.md, "Liveness".
"""
from __future__ import annotations

import abc

from .ownership import Verdict
from .records import NodeRecord, SandboxRecord


class RegistryError(Exception):
    """The registry could not be reached or refused the operation."""


class UnreadableRecord(RegistryError):
    """A stored record this code cannot read: malformed, or another schema version."""


class NodeIdInUse(RegistryError):
    """A live node record of this node id belongs to another agent instance, or
    cannot be read (a newer agent's?): either way not ours to overwrite."""

    def __init__(self, node_id: str, holder: str) -> None:
        super().__init__(f"node id {node_id!r} is in use by {holder}: give each agent its own node_id; "
                         f"nothing is published under this one while that record lives")

    @classmethod
    def by(cls, node: NodeRecord, stored: NodeRecord, now: float) -> NodeIdInUse:
        age = now - stored.heartbeat_at
        return cls(node.node_id, f"another agent (address {stored.address or '?'}, instance "
                                 f"{stored.extra.get('instance', '?')}, heartbeat {age:.1f} s ago)")

    @classmethod
    def unreadable(cls, node_id: str, error: object) -> NodeIdInUse:
        return cls(node_id, f"a node record this agent cannot read ({error}; a newer agent?)")


class Registry(abc.ABC):
    url: str

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def write_many(self, records: list[SandboxRecord], ttl_s: float,
                         claims: list[bool] | None = None) -> list[Verdict]:
        """Store each record (a tombstone too) by the owner check plus seq rule
        (ownership.decide), in order, each atomically; `claims[i]`: record i is
        a claim (its node just allocated the sandbox). Backends batch it."""

    async def write_sandbox(self, record: SandboxRecord, ttl_s: float, claim: bool = False) -> Verdict:
        return (await self.write_many([record], ttl_s, [claim]))[0]

    async def put_sandbox(self, record: SandboxRecord, ttl_s: float) -> bool:
        """write_sandbox without a claim: True if stored."""
        return await self.write_sandbox(record, ttl_s) == Verdict.STORED

    async def put_many(self, records: list[SandboxRecord], ttl_s: float) -> list[bool]:
        return [v == Verdict.STORED for v in await self.write_many(records, ttl_s)]

    @abc.abstractmethod
    async def refresh(self, node: NodeRecord, sandbox_ids: list[str], ttl_s: float) -> bool:
        """Heartbeat: write the node record and extend the TTL of the listed v1
        sandbox records (only those still owned by this node). True if the node
        record was missing (absent or expired: the registry was emptied, or the node
        was taken for dead), so the caller must write all its records again. Raises
        NodeIdInUse, writing nothing, if another agent instance's node record of this
        id is live (ownership.node_id_taken)."""

    @abc.abstractmethod
    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        """The live record, or None if absent, expired, a tombstone or its node is dead.
        Raises UnreadableRecord for a record of another schema version."""

    @abc.abstractmethod
    async def get_node(self, node_id: str) -> NodeRecord | None: ...

    @abc.abstractmethod
    async def node_sandboxes(self, node_id: str) -> list[str]:
        """Ids of the live (non-tombstone) sandbox records owned by node_id."""

    @abc.abstractmethod
    async def server_time(self) -> float:
        """The registry's clock (unix seconds), to measure skew."""

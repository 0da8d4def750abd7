"""Who may write what in a shared registry (pure): a sandbox record (the owner
check plus the seq rule) and a node id (one agent instance per node id).

A sandbox has one owner in the registry: the node named by its stored record.
Only the owner's writes are ordered by `seq` (its own hybrid clock, so two
nodes' clocks are never compared). Another node replaces the record only with
a *claim* (its first writes after allocating the sandbox: a move) or over a
tombstone (the owner released it). So during a move the registry follows the
new node from its first claim on, and the old node's probe updates, heartbeats
and release are refused, whatever the clocks say. docs/registry.md, "Moves".
The SQLite backend calls `decide`; the Redis write script mirrors it in Lua
(tests/registry/test_moves.py runs one case table through both).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from .records import NodeRecord

# The node record's `extra` label naming the agent instance (a random id kept in
# the agent's state, so a restart is the same instance and another host is not).
INSTANCE_LABEL = "instance"


class Verdict(enum.IntEnum):
    """What a backend did with a write (the Redis script returns these numbers)."""
    STALE = 0        # same owner, seq not higher than the stored one
    STORED = 1
    NOT_OWNER = 2    # another node owns the record and this write is not a claim
    UNREADABLE = 3   # the stored record is of another schema version (or malformed): never overwritten


@dataclass(frozen=True)
class Stored:
    """The part of a stored record the rule reads."""
    node_id: str
    seq: int
    deleted: bool
    readable: bool = True    # False: another schema version or malformed (then the rest is empty)


def decide(stored: Stored | None, node_id: str, seq: int, claim: bool) -> Verdict:
    """`stored` is None when there is no live record or tombstone (absent or expired)."""
    if stored is None:
        return Verdict.STORED
    if not stored.readable:
        return Verdict.UNREADABLE
    if stored.node_id == node_id:
        return Verdict.STORED if seq > stored.seq else Verdict.STALE
    if claim or stored.deleted:
        return Verdict.STORED
    return Verdict.NOT_OWNER


def node_id_taken(stored: NodeRecord | None, instance: str) -> bool:
    """True if a live node record of this node id was written by another agent
    instance. A record without the label (an older agent) is not a collision:
    it cannot be told apart from this agent before an upgrade."""
    other = stored.extra.get(INSTANCE_LABEL) if stored is not None else None
    return bool(other) and bool(instance) and other != instance

"""Which sandboxes an edge may serve: those whose node is alive (pure).

A v2 sandbox record has no expiry of its own: it is valid while its node's
record lives (docs/registry.md, "Liveness"). The Redis feed keeps one of these:
it hands over every record it reads and what it learns of node keys (a TTL
from a snapshot or a lookup, a confirmed expiry), and gets back the changes the
maps must apply. Times are the caller's monotonic clock.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .maps import Entries


@dataclass(frozen=True)
class Change:
    sandbox_id: str
    entries: Entries     # what the maps must now hold for it ({}: nothing, the sandbox is gone)


@dataclass
class NodeLiveness:
    deadlines: dict[str, float] = field(default_factory=dict)         # live node -> when its key may expire
    _records: dict[str, tuple[str, Entries]] = field(default_factory=dict)   # sandbox -> (node, entries)
    _by_node: dict[str, set[str]] = field(default_factory=dict)

    def alive(self, node_id: str) -> bool:
        return node_id in self.deadlines

    def unknown(self, node_ids: set[str]) -> set[str]:
        """Nodes not known alive: the caller looks their keys up."""
        return {n for n in node_ids if n not in self.deadlines}

    def record(self, sandbox_id: str, node_id: str, entries: Entries) -> Change | None:
        """A record was read or changed ({}: gone); what to serve now, or None if nothing
        changes (a record of a dead node that was not served either)."""
        was_served = self._forget(sandbox_id)
        if not entries:
            return Change(sandbox_id, {})
        self._records[sandbox_id] = (node_id, entries)
        self._by_node.setdefault(node_id, set()).add(sandbox_id)
        if self.alive(node_id):
            return Change(sandbox_id, entries)
        return Change(sandbox_id, {}) if was_served else None

    def node_alive(self, node_id: str, deadline: float) -> list[Change]:
        """Its key lives until `deadline`: the records held back while it was dead are served."""
        revived = node_id not in self.deadlines
        self.deadlines[node_id] = deadline
        if not revived:
            return []
        return [Change(sid, self._records[sid][1]) for sid in sorted(self._by_node.get(node_id, ()))]

    def node_dead(self, node_id: str) -> list[Change]:
        """Its key is gone: none of its records is served (they are kept, should it return)."""
        if self.deadlines.pop(node_id, None) is None:
            return []
        return [Change(sid, {}) for sid in sorted(self._by_node.get(node_id, ()))]

    def due(self, now: float) -> list[str]:
        """Live nodes whose key may have expired: the caller confirms (PTTL) before node_dead."""
        return sorted(n for n, deadline in self.deadlines.items() if deadline <= now)

    def _forget(self, sandbox_id: str) -> bool:
        """Drop the sandbox's record; True if it was served."""
        held = self._records.pop(sandbox_id, None)
        if held is None:
            return False
        node_id, _ = held
        self._by_node[node_id].discard(sandbox_id)
        if not self._by_node[node_id]:
            del self._by_node[node_id]
        return self.alive(node_id)

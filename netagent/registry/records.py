"""Routing-registry records (schema version 2): pure data, JSON in and out.

A sandbox record says where a sandbox's exposed ports are and whether they
answer. Every write carries a per-sandbox sequence number; a backend keeps a
write only if its sequence is higher than the stored one, so a late or replayed
write never overwrites a newer one. See docs/registry.md.

v2 (this agent) and v1 (older agents) have the same fields; they differ in
liveness: a v1 sandbox record lives by its own TTL, a v2 one while its node's
record lives. Readers check the node either way; a v1-only reader refuses v2.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)   # a reader refuses any other `v`


@dataclass(frozen=True)
class PortRecord:
    guest_port: int
    protocol: str            # "tcp" | "udp"
    host_port: int
    reachable: bool | None   # None: never probed (UDP is not probed)
    changed_at: float        # unix seconds of the last reachability change
    checked_at: float        # unix seconds of the last probe (0: none yet)
    # Edge access (docs/registry.md). Written only when not the default, so a
    # public, unmasked port reads the same to an edge that predates these fields,
    # and such an edge refuses (502s) a private port rather than serving it openly.
    public: bool = True
    token_sha256: str = ""   # hex SHA-256 of the access token of a private port
    host_mask: str = ""      # the Host header sent to the guest instead of the public one
    mode: str = "http"       # "http": the edge's HTTP path serves it; "tcp": its raw TCP path only

    @property
    def key(self) -> str:
        return f"{self.guest_port}/{self.protocol}"


@dataclass(frozen=True)
class SandboxRecord:
    sandbox_id: str
    node_id: str
    node_address: str        # where host_port answers (the node's uplink address)
    seq: int                 # per-sandbox, strictly increasing per write
    updated_at: float
    ports: tuple[PortRecord, ...] = ()
    deleted: bool = False    # a tombstone: the sandbox was released at `seq`
    v: int = SCHEMA_VERSION
    # Lifecycle (docs/registry.md, "Paused sandboxes"): set by the orchestrator through
    # the agent's API. Written only when true, like a port's access fields, so a
    # running sandbox's record reads the same to a reader that predates them.
    paused: bool = False     # the VM is paused: the edge holds or answers its requests itself
    wake: bool = False       # a request to a paused sandbox asks the orchestrator to resume it

    def __post_init__(self) -> None:
        # One canonical port order, so a record equals its own JSON round trip.
        object.__setattr__(self, "ports", tuple(sorted(self.ports, key=lambda p: (p.guest_port, p.protocol))))

    @property
    def lives_with_node(self) -> bool:
        return lives_with_node(self.v, self.deleted)

    def port(self, guest_port: int, protocol: str = "tcp") -> PortRecord | None:
        return next((p for p in self.ports if p.guest_port == guest_port and p.protocol == protocol), None)

    def to_json(self) -> str:
        doc = asdict(self)
        doc["ports"] = {p.key: _port_doc(p) for p in self.ports}
        for name in ("paused", "wake"):
            if not doc[name]:
                del doc[name]
        return json.dumps(doc, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> SandboxRecord:
        """Raises ValueError for anything that is not a v1 or v2 sandbox record."""
        doc = _load(raw, "sandbox")
        try:
            ports = tuple(PortRecord(**p) for p in doc.pop("ports", {}).values())
            return cls(ports=ports, **doc)
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"malformed sandbox record: {exc}") from exc

    @classmethod
    def tombstone(cls, sandbox_id: str, node_id: str, seq: int, now: float) -> SandboxRecord:
        return cls(sandbox_id, node_id, "", seq, now, (), deleted=True)


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    address: str
    heartbeat_at: float      # unix seconds, the agent's clock
    version: str = ""
    sandboxes: int = 0
    v: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> NodeRecord:
        """Raises ValueError for anything that is not a v1 or v2 node record."""
        doc = _load(raw, "node")
        try:
            return cls(**doc)
        except TypeError as exc:
            raise ValueError(f"malformed node record: {exc}") from exc


def lives_with_node(v: object, deleted: object) -> bool:
    """A v2 sandbox record (not a tombstone) is stored without expiry and served while
    its node's record lives; a tombstone and a v1 record live by their own TTL."""
    return v == 2 and deleted is not True


_PORT_DEFAULTS = {"public": True, "token_sha256": "", "host_mask": "", "mode": "http"}


def _port_doc(port: PortRecord) -> dict[str, Any]:
    doc = asdict(port)
    for name, default in _PORT_DEFAULTS.items():
        if doc[name] == default:
            del doc[name]
    return doc


def _load(raw: str | bytes, kind: str) -> dict[str, Any]:
    doc = json.loads(raw)  # json.JSONDecodeError is a ValueError
    if not isinstance(doc, dict):
        raise ValueError(f"malformed {kind} record: not a JSON object")
    if doc.get("v") not in READABLE_VERSIONS:
        raise ValueError(f"unsupported {kind} record version {doc.get('v')!r} (this reader knows "
                         f"{', '.join(map(str, READABLE_VERSIONS))})")
    return doc

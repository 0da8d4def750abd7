"""What HAProxy's routing maps must hold for a set of registry records: pure.

The maps are sharded by sandbox id (crc32 mod N, computed the same way by
HAProxy's `crc32,mod(N)`), because HAProxy 2.6 finds an entry to `set` or `del`
by walking the map's list: ~10 ms per change in a 50,000-entry map, ~0.2 ms in
a 64th of it. Lookups stay one tree search in one shard.

Entries of a shard (docs/edge.md):
  {sandbox_id}          "1"                                    the sandbox is live (404 if absent)
  {sandbox_id}/{port}   "{ip}|{host_port}|{token_sha256}|{host_mask}"
                        one per exposed TCP port; ip and host_port are empty
                        unless reachable is true (502 "port is not open").
"""
from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..registry import SandboxRecord

DEFAULT_SHARDS = 64
# What the HAProxy config accepts as a host label's sandbox id (routing.py: DNS_ID).
HOST_FORM_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# A map value is one token to the runtime API: no whitespace, and '|' separates fields.
_VALUE_SAFE = re.compile(r"[^\s|]*")

Entries = dict[str, str]                   # key -> value of one shard
ShardedEntries = dict[int, Entries]        # shard -> entries


def shard_of(sandbox_id: str, shards: int) -> int:
    return zlib.crc32(sandbox_id.encode()) % shards


def port_value(ip: str, host_port: int | str, token_sha256: str, host_mask: str) -> str:
    return f"{ip}|{host_port}|{token_sha256}|{host_mask}"


def record_entries(record: SandboxRecord) -> Entries:
    """The map entries for one live record; none for a tombstone or an id the
    host form cannot name (upper case, '_', '.': too long for a label)."""
    sid = record.sandbox_id
    if record.deleted or not _host_form(sid):
        return {}
    entries = {sid: "1"}
    for port in record.ports:
        if port.protocol != "tcp":
            continue
        mask = port.host_mask.replace("{port}", str(port.guest_port))
        token = port.token_sha256.lower() if not port.public else ""
        if not port.public and not re.fullmatch(r"[0-9a-f]{64}", token):
            token = "!"   # private without a usable hash: no token can match
        if not _VALUE_SAFE.fullmatch(mask):
            mask = ""      # refused by the API already; never let it break the map line
        reachable = port.reachable is True and bool(record.node_address)
        entries[f"{sid}/{port.guest_port}"] = port_value(
            record.node_address if reachable else "", port.host_port if reachable else "", token, mask)
    return entries


def unreadable_entries(sandbox_id: str) -> Entries:
    """A record the edge cannot read (another schema version): the sandbox exists,
    none of its ports is served (502)."""
    return {sandbox_id: "1"} if _host_form(sandbox_id) else {}


def _host_form(sandbox_id: str) -> bool:
    return bool(HOST_FORM_ID.fullmatch(sandbox_id)) and len(sandbox_id) <= 61


@dataclass(frozen=True)
class MapOp:
    verb: str       # "add" | "set" | "del"
    shard: int
    key: str
    value: str = ""


def diff_sandbox(sandbox_id: str, old: Mapping[str, str], new: Mapping[str, str], shards: int) -> list[MapOp]:
    """Ops turning one sandbox's entries `old` into `new`. The existence entry is
    added before and removed after its ports, so a lookup never sees a port of a
    sandbox that reads as unknown."""
    shard = shard_of(sandbox_id, shards)
    ops: list[MapOp] = []
    order = sorted(new, key=lambda k: k != sandbox_id)
    for key in order:
        if key not in old:
            ops.append(MapOp("add", shard, key, new[key]))
        elif old[key] != new[key]:
            ops.append(MapOp("set", shard, key, new[key]))
    for key in sorted(old, key=lambda k: k == sandbox_id):
        if key not in new:
            ops.append(MapOp("del", shard, key))
    return ops


class MapMirror:
    """What the control plane last wrote to HAProxy, per sandbox: it turns a
    changed record into the few ops it needs, and knows add from set."""

    def __init__(self, shards: int = DEFAULT_SHARDS) -> None:
        self.shards = shards
        self.by_sandbox: dict[str, Entries] = {}

    def reset(self, records: Iterable[SandboxRecord], unreadable: Iterable[str] = ()) -> ShardedEntries:
        """For a full sync: the mirror holds exactly `records` (and the ids whose
        record could not be read); returns every shard's contents."""
        self.by_sandbox = {}
        for sid in unreadable:
            if entries := unreadable_entries(sid):
                self.by_sandbox[sid] = entries
        for record in records:
            if entries := record_entries(record):
                self.by_sandbox[record.sandbox_id] = entries
        out: ShardedEntries = {i: {} for i in range(self.shards)}
        for sid, entries in self.by_sandbox.items():
            out[shard_of(sid, self.shards)].update(entries)
        return out

    def update(self, record: SandboxRecord) -> list[MapOp]:
        return self._replace(record.sandbox_id, record_entries(record))

    def unreadable(self, sandbox_id: str) -> list[MapOp]:
        return self._replace(sandbox_id, unreadable_entries(sandbox_id))

    def remove(self, sandbox_id: str) -> list[MapOp]:
        return self._replace(sandbox_id, {})

    def _replace(self, sandbox_id: str, new: Entries) -> list[MapOp]:
        old = self.by_sandbox.get(sandbox_id, {})
        ops = diff_sandbox(sandbox_id, old, new, self.shards)
        if new:
            self.by_sandbox[sandbox_id] = new
        else:
            self.by_sandbox.pop(sandbox_id, None)
        return ops

"""What HAProxy's routing maps must hold for a set of registry records: pure.

The maps are sharded by sandbox id (crc32 mod N, computed the same way by
HAProxy's `crc32,mod(N)`), because HAProxy 2.6 finds an entry to `set` or `del`
by walking the map's list: ~10 ms per change in a 50,000-entry map, a 64th of
that in a shard. Lookups stay one tree search: each shard is its own HAProxy
backend, chosen by name, so a request never evaluates another shard's rules.

Entries of a shard (docs/edge.md):
  {sandbox_id}          "1"                                    the sandbox is live (404 if absent)
                        "paused" / "wake"                      paused (without / with wake on request)
  {sandbox_id}/{port}   "{ip}|{host_port}|{token_sha256}|{host_mask}" and, when the
                        last probe did not say open, "|closed": one per exposed TCP
                        port. A closed port is still tried (a server that just
                        started is served); only a failed connect answers 502 "port
                        is not open". ip and host_port are empty when the node's
                        address is unusable (502 without a connect).
  {sandbox_id}/{port}/tcp  the same value, for a port exposed in mode "tcp": only the
                        raw TCP path looks it up, so each path serves its own ports.
"""
from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from ..registry import SandboxRecord
from ..registry.records import READABLE_VERSIONS

DEFAULT_SHARDS = 64
# What the HAProxy config accepts as a host label's sandbox id (haproxy.cfg.tmpl: host_form).
HOST_FORM_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# A map value is one token to the runtime API: no whitespace, and '|' separates fields.
_VALUE_SAFE = re.compile(r"[^\s|]*")

Entries = dict[str, str]                   # key -> value of one shard
ShardedEntries = dict[int, Entries]        # shard -> entries


def shard_of(sandbox_id: str, shards: int) -> int:
    return zlib.crc32(sandbox_id.encode()) % shards


CLOSED = "closed"     # the 5th field of a port whose last probe did not say open


def port_value(ip: str, host_port: int | str, token_sha256: str, host_mask: str, closed: bool = False) -> str:
    return f"{ip}|{host_port}|{token_sha256}|{host_mask}" + (f"|{CLOSED}" if closed else "")


# One port as the maps need it: guest_port, protocol, host_port, reachable, public, token_sha256,
# host_mask, mode.
PortFields = tuple[int, str, int, bool, bool, str, str, str]
TCP_SUFFIX = "/tcp"    # the key suffix of a mode "tcp" port
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def record_entries(record: SandboxRecord) -> Entries:
    """The map entries for one record; none for a tombstone or an id the host form
    cannot name (upper case, '_', '.', too long for a label)."""
    if record.deleted:
        return {}
    return _entries(record.sandbox_id, record.node_address, [
        (p.guest_port, p.protocol, p.host_port, p.reachable is True, p.public, p.token_sha256, p.host_mask,
         p.mode) for p in record.ports], lifecycle(record.paused, record.wake))


LIVE, PAUSED, WAKE = "1", "paused", "wake"    # the existence entry's values


def lifecycle(paused: object, wake: object) -> str:
    if paused is not True:
        return LIVE
    return WAKE if wake is True else PAUSED


def entries_from_json(sandbox_id: str, raw: str | None) -> Entries:
    """record_entries straight from a stored record's JSON (a full sync reads 50,000 of
    them: this skips building the record objects). None (absent) or a tombstone: {};
    a record this edge cannot read (another schema version, malformed): unreadable_entries."""
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
        if doc["v"] not in READABLE_VERSIONS or doc["sandbox_id"] != sandbox_id:
            raise ValueError("not a v1/v2 record of this sandbox")
        if doc["deleted"] is True:
            return {}
        ports = [(int(p["guest_port"]), str(p["protocol"]), int(p["host_port"]), p["reachable"] is True,
                  p.get("public", True) is not False, str(p.get("token_sha256", "")), str(p.get("host_mask", "")),
                  str(p.get("mode", "http")))
                 for p in doc["ports"].values()]
        address = str(doc["node_address"])
        state = lifecycle(doc.get("paused"), doc.get("wake"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return unreadable_entries(sandbox_id)
    return _entries(sandbox_id, address, ports, state)


def _entries(sid: str, node_address: str, ports: Iterable[PortFields], state: str = LIVE) -> Entries:
    if not _host_form(sid):
        return {}
    entries = {sid: state}
    address_ok = bool(node_address) and bool(_VALUE_SAFE.fullmatch(node_address))
    for guest_port, protocol, host_port, reachable, public, token_sha256, host_mask, mode in ports:
        if protocol != "tcp" or mode not in ("http", "tcp"):
            continue       # a mode this edge does not know is served on neither path
        mask = host_mask.replace("{port}", str(guest_port))
        token = "" if public else token_sha256.lower()
        if not public and not _SHA256_HEX.fullmatch(token):
            token = "!"   # private without a usable hash: no token can match
        if not _VALUE_SAFE.fullmatch(mask):
            mask = ""      # refused by the API already; never let it break the map line
        key = f"{sid}/{guest_port}" + (TCP_SUFFIX if mode == "tcp" else "")
        if address_ok:
            entries[key] = port_value(node_address, host_port, token, mask, closed=not reachable)
        else:
            entries[key] = port_value("", "", token, mask)
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
        self._shard_ids: list[set[str]] = [set() for _ in range(shards)]

    def reset(self, by_sandbox: Mapping[str, Entries]) -> ShardedEntries:
        """For a full sync: the mirror holds exactly these entries; returns every shard's contents."""
        self.by_sandbox = {sid: entries for sid, entries in by_sandbox.items() if entries}
        self._shard_ids = [set() for _ in range(self.shards)]
        for sid in self.by_sandbox:
            self._shard_ids[shard_of(sid, self.shards)].add(sid)
        return self.sharded()

    def sharded(self) -> ShardedEntries:
        """Every shard's contents (what HAProxy must hold)."""
        return {i: dict(self.shard_entries(i)) for i in range(self.shards)}

    def shard_entries(self, shard: int) -> Iterator[tuple[str, str]]:
        """One shard's entries, each sandbox's existence entry before its ports."""
        for sid in self._shard_ids[shard]:
            yield from self.by_sandbox[sid].items()

    def replace(self, sandbox_id: str, new: Entries) -> list[MapOp]:
        """The ops that turn what HAProxy has for the sandbox into `new` ({}: remove it)."""
        old = self.by_sandbox.get(sandbox_id, {})
        ops = diff_sandbox(sandbox_id, old, new, self.shards)
        ids = self._shard_ids[shard_of(sandbox_id, self.shards)]
        if new:
            self.by_sandbox[sandbox_id] = new
            ids.add(sandbox_id)
        else:
            self.by_sandbox.pop(sandbox_id, None)
            ids.discard(sandbox_id)
        return ops

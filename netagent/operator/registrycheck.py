"""The CLI's own look at the routing registry: one sandbox's record compared
with the agent (registry drift), and doctor's connectivity and clock checks.

The CLI opens the registry itself with the agent's config (the SQLite file is
root's; Redis answers anyone with the URL), so it sees what an edge proxy
sees, not what the agent believes it wrote.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..config import Config
from ..registry import Registry, RegistryError, SandboxRecord, open_registry
from .ages import ago, from_ms

T = TypeVar("T")

OP_TIMEOUT_S = 5.0                 # the sqlite busy timeout; redis gives up after ~1 s itself
SKEW_WARN_S, SKEW_FAIL_S = 1.0, 5.0
SETTLE_S = 0.5                     # show: how long to let a change in flight land

Check = tuple[str, str, str, str]  # name, ok|warn|fail, detail, fix


@dataclass
class RegistryRead:
    url: str                       # shown URL (no password); "" when off
    state: str                     # "ok" | "off" | "unreachable"
    error: str = ""
    record: SandboxRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "state": self.state, "error": self.error,
                "record": json.loads(self.record.to_json()) if self.record else None}


def shown_url(url: str) -> str:
    """The registry URL without a password."""
    from ..registry.rediscluster import CLUSTER_SCHEMES, parse_cluster_url
    if url.startswith(CLUSTER_SCHEMES):
        return parse_cluster_url(url, "")[2]
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return url
    from ..registry.redis import split_url
    return split_url(url)[2]


def read_sandbox(config: Config, sandbox_id: str) -> RegistryRead:
    """The sandbox's live record as an edge would read it."""
    url = config.registry_in_effect()
    if not url:
        return RegistryRead("", "off")
    if missing := _missing_sqlite_file(url):
        return RegistryRead(shown_url(url), "unreachable", missing)
    try:
        record = _run(url, lambda reg: reg.get_sandbox(sandbox_id))
    except (RegistryError, TimeoutError, ValueError) as exc:
        return RegistryRead(shown_url(url), "unreachable", _words(exc))
    return RegistryRead(shown_url(url), "ok", record=record)


def drift(sandbox: dict[str, Any], record: SandboxRecord | None, node_id: str,
          node_address: str) -> list[dict[str, str]]:
    """Where the registry's record disagrees with the agent's `Get` of the sandbox."""
    if record is None:
        return [{"object": "registry record", "problem": "missing (absent, expired or a tombstone): "
                                                         "edges cannot route to this sandbox"}]
    found: list[dict[str, str]] = []

    def add(obj: str, problem: str) -> None:
        found.append({"object": obj, "problem": problem})

    if record.node_id != node_id:
        add("registry record", f"node_id {record.node_id!r} in the registry, {node_id!r} here")
    if node_address and record.node_address != node_address:
        add("registry record", f"node_address {record.node_address!r} in the registry, {node_address!r} here")
    ours = {(int(p["guestPort"]), protocol(p)): p for p in sandbox.get("ports", [])}
    for (guest_port, proto), port in ours.items():
        theirs = record.port(guest_port, proto)
        name = f"registry port {proto}/{guest_port}"
        if theirs is None:
            add(name, "missing in the registry (exposed in the agent)")
            continue
        if theirs.host_port != int(port["hostPort"]):
            add(name, f"host_port {theirs.host_port} in the registry, {port['hostPort']} in the agent")
        if theirs.reachable != port.get("reachable"):
            add(name, f"reachable {_flag(theirs.reachable)} in the registry, "
                      f"{_flag(port.get('reachable'))} in the agent")
    for theirs in record.ports:
        if (theirs.guest_port, theirs.protocol) not in ours:
            add(f"registry port {theirs.protocol}/{theirs.guest_port}",
                f"in the registry (host port {theirs.host_port}), not exposed in the agent")
    return found


def compare(config: Config, sandbox_id: str, get: Callable[[], dict[str, Any]], sandbox: dict[str, Any],
            node_id: str, node_address: str) -> tuple[RegistryRead, dict[str, Any], list[dict[str, str]]]:
    """Read the record and compare it with `sandbox`. A reachability change is
    published within milliseconds, so on a disagreement look once more (with a
    fresh `get()`) and report only what persists. Returns the read, the
    sandbox compared last, and the drift."""
    read = read_sandbox(config, sandbox_id)
    if read.state != "ok":
        return read, sandbox, []
    found = drift(sandbox, read.record, node_id, node_address)
    if found:
        time.sleep(SETTLE_S)
        sandbox, read = get(), read_sandbox(config, sandbox_id)
        found = drift(sandbox, read.record, node_id, node_address) if read.state == "ok" else []
    return read, sandbox, found


def record_lines(record: SandboxRecord, now: float) -> dict[str, Any]:
    """The record for `show`, as label -> value pairs."""
    return {"seq": record.seq, "node": f"{record.node_id} at {record.node_address}",
            "updated": ago(record.updated_at, now),
            "ports": [f"{p.protocol}/{p.guest_port} -> {p.host_port} "
                      f"{_reachability(p.reachable, p.changed_at, p.checked_at, now)}" for p in record.ports]}


def port_line(port: dict[str, Any], now: float) -> str:
    """One exposed port of the agent's `Get`, with its reachability."""
    line = f"{protocol(port)}/{port['guestPort']} -> {port['hostPort']}"
    if protocol(port) != "tcp":
        return f"{line} (not probed: udp)"
    state = _reachability(port.get("reachable"), from_ms(port.get("changedUnixMs")),
                          from_ms(port.get("checkedUnixMs")), now)
    return f"{line} {state}"


def protocol(port: dict[str, Any]) -> str:
    name = str(port.get("protocol", "PROTOCOL_TCP")).removeprefix("PROTOCOL_").lower()
    return "tcp" if name in ("", "unspecified") else name


# ---- doctor --------------------------------------------------------------

def doctor(config: Config) -> list[Check]:
    """Registry connectivity (connect + a read of our node record) and clock skew."""
    url = config.registry_in_effect()
    if not url:
        return [("registry", "ok", 'off (registry_url = ""): nothing is published, so no edge routes to '
                                   "this host's sandboxes", "")]
    shown = shown_url(url)
    if missing := _missing_sqlite_file(url):
        return [("registry", "warn", missing, "start the agent: it creates the file")]
    try:
        elapsed_s, heartbeat_at, skew_s, uncertainty_s = _run(url, lambda reg: _probe(reg, config.node_id))
    except (RegistryError, TimeoutError, ValueError) as exc:
        words = _words(exc)   # a RegistryError names the registry already
        return [("registry", "fail", words if shown in words else f"{shown}: {words}", _connect_fix(url))]
    detail = f"{shown} answers (connect + read in {elapsed_s * 1000:.0f} ms); "
    if heartbeat_at is None:
        reach: Check = ("registry", "warn", detail + f"no live record of node {config.node_id!r}",
                        "the agent is not running or cannot write: start it; `netagent status` shows its "
                        "registry error")
    else:
        reach = ("registry", "ok", detail + f"node {config.node_id!r} heartbeat {ago(heartbeat_at)}", "")
    return [reach, skew_check(url, skew_s, uncertainty_s)]


async def _probe(reg: Registry, node_id: str) -> tuple[float, float | None, float, float]:
    started = time.monotonic()
    await reg.connect()
    node = await reg.get_node(node_id)
    elapsed_s = time.monotonic() - started
    before = time.time()
    server = await reg.server_time()
    after = time.time()
    return elapsed_s, node.heartbeat_at if node else None, server - (before + after) / 2, (after - before) / 2


def skew_check(url: str, skew_s: float, uncertainty_s: float) -> Check:
    if url.startswith("sqlite://"):
        return ("registry clock skew", "ok", "none possible: the SQLite registry runs on this host's clock", "")
    detail = f"{skew_s:+.3f} s (±{uncertainty_s:.3f} s) against the Redis server's clock"
    size = abs(skew_s) - uncertainty_s
    status = "fail" if size > SKEW_FAIL_S else "warn" if size > SKEW_WARN_S else "ok"
    if status == "ok":
        return ("registry clock skew", "ok", detail, "")
    return ("registry clock skew", status, detail,
            "sync both clocks with NTP (`timedatectl set-ntp true`, or chrony) here and on the Redis host: "
            "record TTLs run on the registry's clock while seq numbers, updated_at and checked_at come from "
            "this host's, so edges misjudge how fresh a record is, and after a sandbox moves, the node whose "
            "clock is behind writes lower seq numbers that the registry refuses")


def _connect_fix(url: str) -> str:
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        return (f"the file {path} must be readable and writable by root (with its -wal/-shm files) and the "
                f"disk not full: ls -l {os.path.dirname(path)}")
    parts = urlsplit(url)
    ping = f"redis-cli -s {parts.path} ping" if url.startswith("unix://") else f"redis-cli -u {shown_url(url)} ping"
    return (f"make sure Redis runs and answers ({ping}), and check registry_url (address, password, TLS) "
            "in the agent's config")


# ---- plumbing --------------------------------------------------------------

def _run(url: str, fn: Callable[[Registry], Awaitable[T]]) -> T:
    """One call on a fresh registry client, with a deadline; always closed."""
    async def call() -> T:
        reg = open_registry(url)
        try:
            return await asyncio.wait_for(fn(reg), OP_TIMEOUT_S)
        finally:
            await reg.close()
    return asyncio.run(call())


def _missing_sqlite_file(url: str) -> str:
    """Reading must not create the agent's database: say so when it is absent."""
    if not url.startswith("sqlite://"):
        return ""
    path = url.removeprefix("sqlite://")
    return "" if os.path.exists(path) else f"{path} does not exist (the agent creates it when it starts)"


def _reachability(reachable: bool | None, changed_at: float, checked_at: float, now: float) -> str:
    if reachable is None:
        return "(not probed yet)"
    state = "reachable" if reachable else "NOT reachable"
    return f"{state} (changed {ago(changed_at, now)}, checked {ago(checked_at, now)})"


def _flag(value: bool | None) -> str:
    return "unknown" if value is None else str(value).lower()


def _words(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {OP_TIMEOUT_S:g} s"
    return str(exc) or type(exc).__name__


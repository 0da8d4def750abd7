"""Wires the prober and the registry publisher to the agent's allocations.

The agent hands every committed burst's rows to `on_committed`. Reachability
changes go back through the agent's committer (stored with their event in one
SQLite transaction), then to the registry. What this needs from the agent is
the small `AgentLink`, not the agent.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import __version__
from ..access import PortAccess
from ..addressing import SlotAddresses
from ..config import Config
from ..core import ops
from ..core.allocation import Allocation
from ..core.rows import AllocationAdded, AllocationDeleted, PausedSet, PortAccessSet, PortAdded, PortDeleted, Row
from ..errors import ConfigError
from ..metrics import Metrics
from ..models import ExposedPort, Protocol
from ..registry import NodeRecord, PortRecord, RegistryError, SandboxRecord, open_registry
from ..registry.base import NodeIdInUse, UnreadableRecord
from ..registry.ownership import INSTANCE_LABEL, node_id_taken
from ..registry.publisher import RegistryPublisher
from .discovery import Discovery
from .prober import Prober
from .schedule import PortProbe, ProbeKey, ProbeSchedule
from .tcp_syn import SynProber

log = logging.getLogger("netagent.reachability")
T = TypeVar("T")


@dataclass(frozen=True)
class AgentLink:
    """What reachability needs from the agent."""
    allocations: Callable[[], Mapping[str, Allocation]]
    slot: Callable[[int], SlotAddresses]
    uplink_addresses: Callable[[], list[str]]
    on_host: Callable[[Callable[[], Any]], Awaitable[Any]]      # run on the host-netns worker
    record: Callable[[list[ops.Reachability]], Awaitable[None]]  # through the committer
    expose: Callable[[str, int], Awaitable[int]]                 # discovery: expose a TCP port
    spawn: Callable[[Coroutine[Any, Any, None]], None]           # a background task the agent waits for
    known: Callable[[], dict[tuple[str, int], tuple[bool, float]]]  # stored reachability
    instance: str = ""                                            # this agent's instance id (node record)


PUBLIC = PortAccess()


class Reachability:
    def __init__(self, config: Config, link: AgentLink, metrics: Metrics):
        self.config = config
        self.link = link
        c = config
        self.schedule = ProbeSchedule(c.probe.interval_s, c.probe.fast_interval_s, c.probe.fast_period_s,
                                      c.probe.timeout_s, c.probe.down_after)
        self.prober: Prober | None = None
        self.publisher: RegistryPublisher | None = None
        self.discovery: Discovery | None = None
        self._changes: dict[ProbeKey, PortProbe] = {}
        self._flushing = False
        self.changes = 0
        metrics.watch_reachability(self.status)

    async def check_node_id(self) -> None:
        """Refuse to start (ConfigError) if another live agent uses our node id. An
        unreachable registry is not a refusal: the heartbeat makes the same check
        atomically and publishes nothing while the other agent lives."""
        url = self.config.registry_in_effect()
        if not url:
            return
        registry = open_registry(url)
        try:
            stored = await registry.get_node(self.config.node_id)
            now = await registry.server_time()
        except UnreadableRecord as exc:
            raise ConfigError(str(NodeIdInUse.unreadable(self.config.node_id, exc))) from exc
        except RegistryError as exc:
            log.warning("could not check node id %r against the registry at start: %s", self.config.node_id, exc)
            return
        finally:
            await registry.close()
        if node_id_taken(stored, self.link.instance):
            assert stored is not None
            raise ConfigError(str(NodeIdInUse.by(self.node_record(), stored, now)))

    async def start(self) -> None:
        syn = await self.link.on_host(SynProber)   # its raw socket lives in the host netns
        self.prober = Prober(syn, self.schedule, self._on_change)
        known = self.link.known()
        for rec in self.link.allocations().values():
            for port in rec.ports.values():
                self._track(rec, port, known.get((rec.sandbox_id, port.guest_port)))
        self.prober.start()
        c = self.config
        url = c.registry_in_effect()
        if url:
            self.publisher = RegistryPublisher(open_registry(url), self.node_record, self.record,
                                               lambda: list(self.link.allocations()), c.registry.ttl_s,
                                               c.registry.heartbeat_s)
            for rec in self.link.allocations().values():   # allocated just before a restart: still claims
                if (window := rec.created_at + c.registry.ttl_s - time.time()) > 0:
                    self.publisher.claim(rec.sandbox_id, window)
            self.publisher.start()
        if c.probe.discovery_port_range:
            self.discovery = Discovery(self.link.allocations, self.link.slot, self.link.expose, self.link.spawn,
                                       self.prober, c.probe.discovery_port_range, c.probe.discovery_rate)
            self.discovery.start()

    async def stop(self) -> None:
        if self.discovery:
            await self.discovery.stop()
        if self.prober:
            await self.prober.stop()
        if self.publisher:
            await self.publisher.stop()

    # ---- called by the agent after each commit ---------------------------

    def on_committed(self, rows: Sequence[Row]) -> None:
        for row in rows:
            match row:
                case AllocationAdded(rec):
                    if self.publisher:       # maybe a move here: the first writes claim the record
                        self.publisher.claim(rec.sandbox_id)
                case AllocationDeleted(rec):
                    self.on_released(rec.sandbox_id)
                case PortAdded(sid, port):
                    rec = self.link.allocations().get(sid)
                    if rec is not None:
                        self._track(rec, port, None)
                    self._mark(sid)
                case PortDeleted(sid, port):
                    self.on_unexposed(sid, port)
                case PortAccessSet(sid, _, _) | PausedSet(sid, _, _):
                    self._mark(sid)

    def on_released(self, sandbox_id: str) -> None:
        if self.prober:
            self.prober.remove_sandbox(sandbox_id)
        self._changes = {k: v for k, v in self._changes.items() if k[0] != sandbox_id}
        self._mark(sandbox_id)

    def on_unexposed(self, sandbox_id: str, port: ExposedPort) -> None:
        if self.prober and port.protocol == Protocol.TCP:
            self.prober.remove((sandbox_id, port.guest_port))
        self._mark(sandbox_id)

    def republish(self) -> None:
        """Rewrite every registry record now (and tombstone strays)."""
        if self.publisher:
            self.publisher.push_all_now()

    # ---- views -------------------------------------------------------------

    def port_view(self, sandbox_id: str, port: ExposedPort) -> ExposedPort:
        probe = self.prober.get((sandbox_id, port.guest_port)) if self.prober else None
        if probe is None or port.protocol != Protocol.TCP:
            return port
        return port.model_copy(update={"reachable": probe.reachable, "changed_at": probe.changed_at,
                                       "checked_at": probe.checked_at})

    async def probe_now(self, rec: Allocation, guest_port: int, timeout: float | None = None) -> dict[str, Any]:
        """One probe now (exposed or not), nothing stored; with the port's host port if exposed."""
        slot = self.link.slot(rec.slot)
        assert self.prober is not None
        result = await self.prober.probe_now(str(slot.host_ip), str(slot.sandbox_ip), guest_port, timeout)
        exposed = rec.ports.get((guest_port, Protocol.TCP))
        return {"reachable": result.reachable, "outcome": result.outcome, "rtt_s": result.rtt_s,
                "host_port": exposed.host_port if exposed else 0}

    def node_address(self) -> str:
        uplink = self.link.uplink_addresses()
        addr = self.config.registry.node_address or (uplink[0] if uplink else "")
        return addr.split("/")[0]

    def node_record(self) -> NodeRecord:
        return NodeRecord(self.config.node_id, self.node_address(), time.time(), __version__,
                          len(self.link.allocations()),
                          extra={INSTANCE_LABEL: self.link.instance} if self.link.instance else {})

    def record(self, sandbox_id: str, seq: int) -> SandboxRecord | None:
        rec = self.link.allocations().get(sandbox_id)
        if rec is None:
            return None
        ports = []
        for p in sorted(rec.ports.values(), key=lambda p: (p.guest_port, p.protocol.value)):
            v = self.port_view(sandbox_id, p)
            access = rec.access.get(p.guest_port, PUBLIC)
            ports.append(PortRecord(p.guest_port, p.protocol.value, p.host_port, v.reachable,
                                    v.changed_at, v.checked_at, access.public, access.token_sha256,
                                    access.host_mask, access.mode))
        return SandboxRecord(sandbox_id, self.config.node_id, self.node_address(), seq, time.time(),
                             tuple(ports), paused=rec.paused, wake=rec.wake)

    def status(self) -> dict[str, Any]:
        p = self.publisher
        return {"registry": getattr(p.registry, "safe_url", p.registry.url) if p else "",
                "registry_healthy": bool(p and p.healthy),
                "registry_error": p.last_error if p else "", "registry_last_success": p.last_success if p else 0.0,
                "probed_ports": len(self.prober.ports) if self.prober else 0,
                "reachable_ports": sum(1 for p in list(self.prober.ports.values()) if p.reachable)
                if self.prober else 0,
                "probes": self.prober.probes if self.prober else 0, "changes": self.changes,
                "registry_writes": p.writes if p else 0, "registry_errors": p.errors if p else 0,
                "registry_refused": p.refused if p else 0}

    # ---- internals -----------------------------------------------------------

    def _track(self, rec: Allocation, port: ExposedPort, known: tuple[bool, float] | None) -> None:
        if self.prober is None or port.protocol != Protocol.TCP:
            return
        slot = self.link.slot(rec.slot)
        probe = PortProbe(rec.sandbox_id, port.guest_port, str(slot.host_ip), str(slot.sandbox_ip))
        if known:
            probe.reachable, probe.changed_at = known
        self.prober.add(probe)

    def _mark(self, sandbox_id: str) -> None:
        if self.publisher:
            self.publisher.mark(sandbox_id)

    def _on_change(self, port: PortProbe) -> None:
        self.changes += 1
        self._changes[port.key] = port
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flushing:
            self._flushing = True
            self.link.spawn(self._flush())

    async def _flush(self) -> None:
        """Store the changes (and their events) through the committer, then publish."""
        try:
            while self._changes:
                batch, self._changes = list(self._changes.values()), {}
                await self.link.record([ops.Reachability(p.sandbox_id, p.guest_port, bool(p.reachable), p.changed_at)
                                        for p in batch if p.reachable is not None])
                for port in batch:
                    log.info("sandbox %s port %d is now %s", port.sandbox_id, port.guest_port,
                             "reachable" if port.reachable else "unreachable")
                    self._mark(port.sandbox_id)
        except Exception:
            log.exception("could not store reachability changes")
        finally:
            self._flushing = False
            if self._changes:
                self._schedule_flush()

    async def wait_idle(self) -> None:
        while self._flushing:
            await asyncio.sleep(0.005)

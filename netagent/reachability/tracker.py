"""Wires the prober and the registry publisher to the agent's allocations.

The agent calls the `on_*` hooks after each committed change. Reachability
changes go back through the agent's committer (stored with their event in one
SQLite transaction), then to the registry.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..access import PortAccess
from ..models import ExposedPort, Protocol
from ..registry import NodeRecord, PortRecord, SandboxRecord, open_registry
from ..registry.publisher import RegistryPublisher
from .discovery import Discovery
from .prober import Prober
from .schedule import PortProbe, ProbeKey, ProbeSchedule
from .tcp_syn import ProbeResult, SynProber

if TYPE_CHECKING:
    from ..agent import Agent
    from ..state import AllocationRecord

log = logging.getLogger("netagent.reachability")


PUBLIC = PortAccess()


class Reachability:
    def __init__(self, agent: Agent):
        self.agent = agent
        c = agent.config
        self.schedule = ProbeSchedule(c.probe_interval_s, c.probe_fast_interval_s, c.probe_fast_period_s,
                                      c.probe_timeout_s, c.probe_down_after)
        self.prober: Prober | None = None
        self.publisher: RegistryPublisher | None = None
        self.discovery: Discovery | None = None
        self._changes: dict[ProbeKey, PortProbe] = {}
        self.access: dict[tuple[str, int], PortAccess] = agent.store.load_port_access()   # edge access per port
        self._flushing = False
        self.changes = 0
        agent.metrics.watch_reachability(self.status)

    async def start(self) -> None:
        syn = await self.agent.host.call(SynProber)   # its raw socket lives in the host netns
        self.prober = Prober(syn, self.schedule, self._on_change)
        known = self.agent.store.load_reachability()
        for rec in self.agent.allocations.values():
            for port in rec.ports.values():
                self._track(rec, port, known.get((rec.sandbox_id, port.guest_port)))
        self.prober.start()
        url = self.agent.config.registry()
        if url:
            c = self.agent.config
            self.publisher = RegistryPublisher(open_registry(url), self.node_record, self.record,
                                               lambda: list(self.agent.allocations), c.registry_ttl_s,
                                               c.registry_heartbeat_s)
            self.publisher.start()
        if self.agent.config.discovery_port_range:
            self.discovery = Discovery(self.agent, self.prober, self.agent.config.discovery_port_range,
                                       self.agent.config.discovery_rate)
            self.discovery.start()

    async def stop(self) -> None:
        if self.discovery:
            await self.discovery.stop()
        if self.prober:
            await self.prober.stop()
        if self.publisher:
            await self.publisher.stop()

    # ---- hooks called by the agent after a commit ------------------------

    def on_allocated(self, rec: AllocationRecord) -> None:
        self._mark(rec.sandbox_id)

    def on_released(self, sandbox_id: str) -> None:
        if self.prober:
            self.prober.remove_sandbox(sandbox_id)
        self._changes = {k: v for k, v in self._changes.items() if k[0] != sandbox_id}
        self.access = {k: v for k, v in self.access.items() if k[0] != sandbox_id}   # the rows cascade
        self._mark(sandbox_id)

    def on_exposed(self, rec: AllocationRecord, port: ExposedPort) -> None:
        self._track(rec, port, None)
        self._mark(rec.sandbox_id)

    def on_unexposed(self, sandbox_id: str, port: ExposedPort) -> None:
        if self.prober and port.protocol == Protocol.TCP:
            self.prober.remove((sandbox_id, port.guest_port))
        self._mark(sandbox_id)

    def on_access_changed(self, sandbox_id: str, guest_port: int, access: PortAccess) -> None:
        self.access[(sandbox_id, guest_port)] = access
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

    async def probe_now(self, sandbox_id: str, guest_port: int, timeout: float | None = None) -> ProbeResult:
        rec = self.agent.allocations[sandbox_id]
        slot = self.agent.plan.slot(rec.slot)
        assert self.prober is not None
        return await self.prober.probe_now(str(slot.host_ip), str(slot.sandbox_ip), guest_port, timeout)

    def node_address(self) -> str:
        info = self.agent.host_info
        addr = self.agent.config.node_address or (info.uplink_addresses[0] if info and info.uplink_addresses else "")
        return addr.split("/")[0]

    def node_record(self) -> NodeRecord:
        return NodeRecord(self.agent.config.node_id, self.node_address(), time.time(), __version__,
                          len(self.agent.allocations))

    def record(self, sandbox_id: str, seq: int) -> SandboxRecord | None:
        rec = self.agent.allocations.get(sandbox_id)
        if rec is None:
            return None
        ports = []
        for p in sorted(rec.ports.values(), key=lambda p: (p.guest_port, p.protocol.value)):
            v = self.port_view(sandbox_id, p)
            access = self.access.get((sandbox_id, p.guest_port), PUBLIC)
            ports.append(PortRecord(p.guest_port, p.protocol.value, p.host_port, v.reachable,
                                    v.changed_at, v.checked_at, access.public, access.token_sha256,
                                    access.host_mask))
        return SandboxRecord(sandbox_id, self.agent.config.node_id, self.node_address(), seq, time.time(),
                             tuple(ports))

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

    def _track(self, rec: AllocationRecord, port: ExposedPort, known: tuple[bool, float] | None) -> None:
        if self.prober is None or port.protocol != Protocol.TCP:
            return
        slot = self.agent.plan.slot(rec.slot)
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
            self.agent._spawn(self._flush())

    async def _flush(self) -> None:
        """Store the changes (and their events) through the committer, then publish."""
        try:
            while self._changes:
                batch, self._changes = list(self._changes.values()), {}
                await self.agent.record_reachability(batch)
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

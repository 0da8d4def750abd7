"""The in-process core API: each call validates its arguments once into a typed
operation (core/ops.py) and hands it to the one committer.

Every call comes as a pair. `allocate(sandbox_id, spec)` takes plain values
(in-process callers, tests); `run_allocate(op)` takes an operation already
validated at another boundary (api/convert.py for gRPC) and does the work.

`CoreApi` is a mixin of `agent.Agent`, which builds the attributes declared
below; it holds no state of its own.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..access import PortAccess
from ..errors import Conflict, InvalidArgument
from ..models import AllocateSpec, EgressPolicy, Limits, Network, validate_port, validate_sandbox_id
from ..usage.ledger import Counts
from . import ops
from .allocation import Allocation
from .planner import existing_port, require
from .views import network_of

if TYPE_CHECKING:
    from ..addressing import AddressPlan
    from ..config import Config
    from ..metrics import Metrics
    from ..reachability.tracker import Reachability
    from ..usage.meter import UsageMeter
    from .committer import Committer
    from .inventory import Inventory
    from .pool import Inflight, WarmPool


class CoreApi:
    config: Config
    plan: AddressPlan
    inventory: Inventory
    pool: WarmPool
    committer: Committer
    metrics: Metrics
    reachability: Reachability
    meter: UsageMeter
    _inflight: Inflight
    _last_call: float

    # ---- sandboxes -------------------------------------------------------------

    async def allocate(self, sandbox_id: str, spec: AllocateSpec | dict[str, Any] | None = None) -> Network:
        return await self.run_allocate(ops.Allocate.of(sandbox_id, spec, self.config.egress_addresses,
                                                       self.config.egress_by_label))

    async def run_allocate(self, op: ops.Allocate) -> Network:
        rec = self.inventory.allocations.get(op.sandbox_id)
        if rec is not None:
            return self._existing(rec, op.spec)
        key = ("allocate", op.sandbox_id)
        if (pending := self._inflight.pending(key)) is not None:
            net = await asyncio.shield(pending)
            return self._existing(self.inventory.allocations[net.sandbox_id], op.spec)
        started = time.perf_counter()
        warm = bool(self.pool.ready)
        net: Network = await self._inflight.run(key, lambda: self._allocate_now(op))
        self.metrics.observe_allocate(time.perf_counter() - started, warm)
        return net

    async def _allocate_now(self, op: ops.Allocate) -> Network:
        slot = await self.pool.take()
        try:
            return await self._submit(replace(op, slot=slot, at=time.time()))  # type: ignore[no-any-return]
        except BaseException:
            self.pool.give_back(slot)
            raise

    async def release(self, sandbox_id: str) -> bool:
        """Release a sandbox's network. Returns False if it was not allocated."""
        return await self.run_release(ops.Release.of(sandbox_id))

    async def run_release(self, op: ops.Release) -> bool:
        if (pending := self._inflight.pending(("allocate", op.sandbox_id))) is not None:
            await asyncio.gather(asyncio.shield(pending), return_exceptions=True)
        if op.sandbox_id not in self.inventory.allocations:
            return False
        started = time.perf_counter()
        released = bool(await self._inflight.run(("release", op.sandbox_id), lambda: self._submit(op)))
        self.metrics.observe_release(time.perf_counter() - started)
        return released

    async def get(self, sandbox_id: str) -> Network:
        return self._network(require(self.inventory, validate_sandbox_id(sandbox_id)))

    async def list(self, labels: dict[str, str] | None = None) -> list[Network]:
        labels = labels or {}
        return [self._network(rec) for rec in sorted(self.inventory.allocations.values(), key=lambda r: r.slot)
                if all(rec.spec.labels.get(k) == v for k, v in labels.items())]

    # ---- exposed ports -----------------------------------------------------------

    async def expose(self, sandbox_id: str, guest_port: int, protocol: str = "tcp",
                     host_port: int | None = None) -> int:
        return (await self.run_expose(ops.Expose.of(sandbox_id, guest_port, protocol, host_port,
                                                    self.config.host_port_range))).host_port

    async def run_expose(self, op: ops.Expose) -> Any:
        existing = existing_port(self.inventory, op)   # an idempotent retry needs no commit
        return existing if existing is not None else await self._submit(op)

    async def set_port_access(self, sandbox_id: str, guest_port: int, *, public: bool | None = None,
                              access_token: str | None = None, host_mask: str | None = None,
                              mode: str | None = None) -> PortAccess:
        """Edge access of a guest port (exposed or not yet): public, or private with a token
        (only its SHA-256 is kept), the Host the guest sees, and the edge path (mode http
        or tcp). None leaves a field as it is."""
        return await self.run_port_access(ops.SetPortAccess.of(sandbox_id, guest_port, public, access_token,
                                                               host_mask, mode))

    async def run_port_access(self, op: ops.SetPortAccess) -> PortAccess:
        require(self.inventory, op.sandbox_id)
        access: PortAccess = await self._submit(op)
        return access

    async def set_paused(self, sandbox_id: str, paused: bool, wake: bool = False) -> bool:
        """The sandbox's VM is paused (wake: edges resume it on a request) or running
        again; published in its registry record. Returns whether anything changed."""
        return await self.run_set_paused(ops.SetPaused.of(sandbox_id, paused, wake))

    async def run_set_paused(self, op: ops.SetPaused) -> bool:
        rec = require(self.inventory, op.sandbox_id)
        if (rec.paused, rec.wake) == (op.paused, op.wake):
            return False                  # an idempotent retry needs no commit
        changed: bool = await self._submit(op)
        return changed

    async def unexpose(self, sandbox_id: str, guest_port: int, protocol: str = "tcp") -> bool:
        return await self.run_unexpose(ops.Unexpose.of(sandbox_id, guest_port, protocol))

    async def run_unexpose(self, op: ops.Unexpose) -> bool:
        rec = require(self.inventory, op.sandbox_id)
        if (op.guest_port, op.protocol) not in rec.ports:
            return False
        return bool(await self._submit(op))

    async def probe(self, sandbox_id: str, guest_port: int, timeout: float | None = None) -> dict[str, Any]:
        """Probe a guest port now (exposed or not); nothing is stored."""
        validate_sandbox_id(sandbox_id)
        validate_port(guest_port, "guest_port")
        if timeout is not None and not 0 < timeout <= 10:
            raise InvalidArgument("timeout must be in (0, 10] seconds")
        return await self.reachability.probe_now(require(self.inventory, sandbox_id), guest_port, timeout)

    # ---- egress: policy, limits, source address, usage -------------------------

    async def update_policy(self, sandbox_id: str, policy: EgressPolicy | dict[str, Any] | None) -> Network:
        """Replace the sandbox's egress policy in one transaction. When it narrows,
        the flows it no longer allows are flushed before this returns."""
        return await self.run_update_policy(ops.UpdatePolicy.of(sandbox_id, policy))

    async def run_update_policy(self, op: ops.UpdatePolicy) -> Network:
        return await self._submit_for_sandbox(op)

    async def set_limits(self, sandbox_id: str, limits: Limits | dict[str, Any] | None) -> Network:
        """New bandwidth limits (None fields: unlimited), set on the slot's qdiscs before this returns."""
        return await self.run_set_limits(ops.SetLimits.of(sandbox_id, limits))

    async def run_set_limits(self, op: ops.SetLimits) -> Network:
        return await self._submit_for_sandbox(op)

    async def set_egress_address(self, sandbox_id: str, address: str | None) -> Network:
        """Give the sandbox another SNAT source (None or "": the uplink's); only
        its own NAT flows are flushed, before this returns."""
        return await self.run_set_egress(ops.SetEgressAddress.of(sandbox_id, address, self.config.egress_addresses))

    async def run_set_egress(self, op: ops.SetEgressAddress) -> Network:
        return await self._submit_for_sandbox(op)

    async def usage(self, sandbox_id: str | None = None) -> dict[str, Counts]:
        """Bytes and packets per allocated sandbox (one, or all), read from the kernel now."""
        if sandbox_id is not None:
            require(self.inventory, validate_sandbox_id(sandbox_id))
        totals = await self.meter.refresh()
        return totals if sandbox_id is None else {sandbox_id: totals.get(sandbox_id, Counts())}

    def last_usage(self, sandbox_id: str | None = None) -> tuple[dict[str, Counts], float]:
        """As of the meter's last periodic reading (at most usage_interval_s old, no
        kernel I/O: `netagent ls`), and that reading's time (0: none yet). A sandbox
        allocated since is left out."""
        if sandbox_id is not None:
            require(self.inventory, validate_sandbox_id(sandbox_id))
        totals, read_at = self.meter.last_reading()
        return (totals if sandbox_id is None else {k: v for k, v in totals.items() if k == sandbox_id}), read_at

    # ---- records from the agent's own subsystems ----------------------------------

    async def record_reachability(self, ports: list[ops.Reachability]) -> None:
        """Store reachability changes with their events (called by the prober's tracker)."""
        await self._submit(ops.RecordReachability(tuple(ports)))

    async def record_denied(self, flows: list[ops.DeniedFlow]) -> None:
        """Store FLOW_DENIED events (called by the denied-flow log)."""
        await self._submit(ops.RecordDenied(tuple(flows)))

    # ---- to the committer ----------------------------------------------------------

    async def _submit(self, op: ops.Operation) -> Any:
        if isinstance(op, ops.CALLER_OPS):
            self._last_call = time.monotonic()   # the warm pool defers refills while callers are busy
        return await self.committer.submit(op)

    async def _submit_for_sandbox(self, op: ops.UpdatePolicy | ops.SetLimits | ops.SetEgressAddress) -> Network:
        require(self.inventory, op.sandbox_id)
        net: Network = await self._submit(op)
        return net

    @property
    def allocations(self) -> Mapping[str, Allocation]:
        return self.inventory.allocations

    def _network(self, rec: Allocation) -> Network:
        return network_of(self.plan, self.config.guest, rec, self.reachability.port_view)

    def _existing(self, rec: Allocation, spec: AllocateSpec) -> Network:
        if rec.spec != spec:
            raise Conflict(f"sandbox {rec.sandbox_id!r} is already allocated with a different spec")
        return self._network(rec)

"""The pure planner: (inventory, operation) -> Change.

No I/O, no clock, no mutation: every function reads the inventory (a draft
during a burst) and returns what should change — state rows, nft element ops,
events and the caller's reply. The committer applies it (core/committer.py).
Errors are raised as NetagentError before anything is returned, so a refused
operation changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..access import PortAccess
from ..addressing import AddressPlan, SlotAddresses
from ..config import GuestPlan
from ..errors import Conflict, NotFound, Unavailable
from ..firewall import elements as el
from ..models import ExposedPort, Network, Protocol, SlotState
from ..policy import narrows
from . import ops
from .allocation import Allocation
from .inventory import Inventory
from .rows import (
    AllocationAdded,
    AllocationDeleted,
    Change,
    EgressSet,
    Event,
    LimitsSet,
    MetaSet,
    PausedSet,
    PolicySet,
    PortAccessSet,
    PortAdded,
    PortDeleted,
    ReachabilitySet,
    SlotSet,
    UsageClosed,
    UsageReleased,
)
from .views import PortView, network_of, plain_port

LIVE_SLOT_STATES = (SlotState.READY, SlotState.ALLOCATED, SlotState.DIRTY)


@dataclass(frozen=True)
class PlanContext:
    """The host facts a plan depends on (from the config in effect)."""
    addresses: AddressPlan
    guest: GuestPlan
    default_internet: bool
    port_view: PortView = plain_port

    def network(self, rec: Allocation) -> Network:
        return network_of(self.addresses, self.guest, rec, self.port_view)


def plan(inv: Inventory, op: ops.Operation, ctx: PlanContext) -> Change:
    match op:
        case ops.Allocate():
            return plan_allocate(inv, op, ctx)
        case ops.Release():
            return plan_release(inv, op, ctx)
        case ops.UpdatePolicy():
            return plan_update_policy(inv, op, ctx)
        case ops.SetEgressAddress():
            return plan_set_egress(inv, op, ctx)
        case ops.SetLimits():
            return plan_set_limits(inv, op, ctx)
        case ops.Expose():
            return plan_expose(inv, op, ctx)
        case ops.Unexpose():
            return plan_unexpose(inv, op, ctx)
        case ops.SetPortAccess():
            return plan_port_access(inv, op)
        case ops.SetPaused():
            return plan_set_paused(inv, op)
        case ops.RecordReachability():
            return plan_reachability(inv, op, ctx)
        case ops.RecordDenied():
            return plan_denied(inv, op)
        case ops.RecordRequests():
            return plan_requests(inv, op)
        case ops.RecordVerdicts():
            return plan_verdicts(inv, op)
        case ops.SlotReady():
            return plan_slot_ready(op, ctx)
        case ops.SlotGone():
            return plan_slot_gone(op, ctx)
        case ops.SlotIncidents():
            return plan_incidents(inv, op)
        case ops.CloseUsage():
            return plan_close_usage(inv, op)
        case ops.Resync():
            return Change(full_sync=True)
    raise TypeError(f"not an operation: {op!r}")


def require(inv: Inventory, sandbox_id: str) -> Allocation:
    rec = inv.allocations.get(sandbox_id)
    if rec is None:
        raise NotFound(f"sandbox {sandbox_id!r} is not allocated on this host")
    return rec


def resolve(policy: ops.Policy, default_internet: bool) -> ops.Policy:
    """Freeze the host default into the policy, so a later change of the
    default does not silently change running sandboxes."""
    if policy.model.internet is not None:
        return policy
    return ops.Policy(policy.model.model_copy(update={"internet": default_internet}),
                      replace(policy.compiled, internet=default_internet))


def plan_allocate(inv: Inventory, op: ops.Allocate, ctx: PlanContext) -> Change:
    if op.sandbox_id in inv.allocations:
        raise Conflict(f"sandbox {op.sandbox_id!r} was allocated concurrently")
    if inv.slots.get(op.slot) != SlotState.READY or op.slot in inv.slot_owner:
        raise Unavailable(f"slot {op.slot} is not a ready slot")
    policy = resolve(op.policy, ctx.default_internet)
    egress = str(op.egress_address) if op.egress_address else None
    rec = Allocation(op.sandbox_id, op.slot, op.spec, op.at, policy.model, policy.compiled, egress_address=egress,
                     limits=op.spec.limits)
    net = ctx.network(rec)
    slot = ctx.addresses.slot(op.slot)
    return Change(
        reply=net,
        rows=(SlotSet(op.slot, SlotState.ALLOCATED), AllocationAdded(rec)),
        nft=tuple(el.add(allocation_elements(slot, rec) + el.usage_elements(str(slot.sandbox_ip)))),
        shape=((op.slot, rec.limits),) if rec.limits.limited else (),
        events=(Event("allocated", rec.sandbox_id, {"sandbox": net.model_dump(mode="json")}),))


def allocation_elements(slot: SlotAddresses, rec: Allocation) -> list[el.Element]:
    """Every element an allocation owns: its ct marks, policy, egress address and exposed ports."""
    ports = [el.port_element(slot, p.protocol.value, p.host_port, p.guest_port) for p in rec.ports.values()]
    return [*el.mark_elements(slot, rec.mark_generation), *el.policy_elements(slot, rec.compiled),
            *egress_elements(slot, rec.egress_address), *ports]


def egress_elements(slot: SlotAddresses, address: str | None) -> list[el.Element]:
    return [el.egress_snat_element(slot, address)] if address else []


def plan_set_limits(inv: Inventory, op: ops.SetLimits, ctx: PlanContext) -> Change:
    """Store the limits; the qdiscs are set after the commit, every time (so a
    retry after a failed tc call sets them again)."""
    rec = require(inv, op.sandbox_id)
    net = ctx.network(replace(rec, limits=op.limits))
    rows = () if op.limits == rec.limits else (LimitsSet(rec.sandbox_id, op.limits),)
    return Change(reply=net, rows=rows, shape=((rec.slot, op.limits),))


def plan_set_egress(inv: Inventory, op: ops.SetEgressAddress, ctx: PlanContext) -> Change:
    """Another SNAT source in one transaction; the sandbox's own flows (its
    NAT flows, ct mark of flows it started) are flushed, no one else's."""
    rec = require(inv, op.sandbox_id)
    net = ctx.network(replace(rec, egress_address=op.address))
    if op.address == rec.egress_address:
        return Change(reply=net)
    slot = ctx.addresses.slot(rec.slot)
    return Change(
        reply=net, rows=(EgressSet(rec.sandbox_id, op.address),),
        nft=tuple(el.delete(egress_elements(slot, rec.egress_address)) + el.add(egress_elements(slot, op.address))),
        events=(Event("policy_updated", rec.sandbox_id, {"sandbox": net.model_dump(mode="json")}),),
        flush_marks=(slot.egress_mark(rec.mark_generation),))


def plan_release(inv: Inventory, op: ops.Release, ctx: PlanContext) -> Change:
    rec = inv.allocations.get(op.sandbox_id)
    if rec is None:
        return Change(reply=False)
    quarantined = inv.slots.get(rec.slot) == SlotState.QUARANTINED   # stays so: nothing to clean
    slot = ctx.addresses.slot(rec.slot)
    # Deleting its marks from live_marks kills every flow of the sandbox when
    # this commits, so its usage counters see nothing more; they stay until the
    # final count is read (CloseUsage), which then hands the slot to the
    # cleaner (the conntrack walk, off the request path).
    return Change(
        reply=True,
        rows=(AllocationDeleted(rec), UsageReleased(rec.sandbox_id, str(slot.sandbox_ip), rec.slot))
        + (() if quarantined else (SlotSet(rec.slot, SlotState.DIRTY),)),
        nft=tuple(el.delete(allocation_elements(slot, rec))),
        events=(Event("released", rec.sandbox_id, {}),),
        close_usage=((rec.sandbox_id, -1 if quarantined else rec.slot, str(slot.sandbox_ip)),))


def plan_close_usage(inv: Inventory, op: ops.CloseUsage) -> Change:
    """The final count; then the slot goes to the cleaner, once: a retried
    CloseUsage whose first try committed finds the slot no longer DIRTY."""
    dirty = op.slot is not None and op.slot >= 0 and inv.slots.get(op.slot) == SlotState.DIRTY
    return Change(rows=(UsageClosed(op.sandbox_id),), nft=tuple(el.delete(el.usage_elements(op.ip))),
                  events=(Event("usage_final", op.sandbox_id, {"usage": op.final}),),
                  clean_slots=(op.slot,) if dirty else ())


def plan_update_policy(inv: Inventory, op: ops.UpdatePolicy, ctx: PlanContext) -> Change:
    """Replace the policy in one transaction. When it narrows, the sandbox's
    egress flows get a new mark generation: the old mark leaves live_marks in
    the same transaction, so every flow the sandbox started is dead when this
    commits (flows to it, on exposed ports, keep their mark). DNS admissions
    of dropped domains end, and the dead entries are flushed later."""
    rec = require(inv, op.sandbox_id)
    new = resolve(op.policy, ctx.default_internet)
    slot = ctx.addresses.slot(rec.slot)
    old_c, new_c = rec.compiled, new.compiled
    nft: list[el.Op] = []
    if old_c != new_c:
        nft = el.delete(el.policy_elements(slot, old_c)) + el.add(el.policy_elements(slot, new_c))
    generation = rec.mark_generation
    dead_marks: tuple[int, ...] = ()
    drop_fqdn: tuple[str, ...] = ()
    if narrows(old_c, new_c):
        generation += 1
        nft += (el.delete(el.egress_mark_elements(slot, rec.mark_generation))
                + el.add(el.egress_mark_elements(slot, generation)))
        dead_marks = (slot.egress_mark(rec.mark_generation),)
        if set(old_c.domains) - set(new_c.domains):
            drop_fqdn = (str(slot.sandbox_ip),)
    net = ctx.network(replace(rec, policy=new.model, compiled=new_c))
    return Change(
        reply=net, rows=(PolicySet(rec.sandbox_id, new.model, new_c, generation),), nft=tuple(nft),
        events=(Event("policy_updated", rec.sandbox_id, {"sandbox": net.model_dump(mode="json")}),),
        dead_marks=dead_marks, drop_fqdn=drop_fqdn)


def existing_port(inv: Inventory, op: ops.Expose) -> ExposedPort | None:
    """The port if it is already exposed as asked (idempotent retry); Conflict
    if it is exposed on another host port than the one asked for."""
    rec = require(inv, op.sandbox_id)
    port = rec.ports.get((op.guest_port, op.protocol))
    if port is not None and op.host_port not in (None, port.host_port):
        raise Conflict(f"{op.protocol.value}/{op.guest_port} of {op.sandbox_id} is already exposed on "
                       f"host port {port.host_port}")
    return port


def plan_expose(inv: Inventory, op: ops.Expose, ctx: PlanContext) -> Change:
    existing = existing_port(inv, op)
    if existing is not None:
        return Change(reply=existing)
    rec = require(inv, op.sandbox_id)
    host_port = inv.pick_host_port(op.protocol, op.host_port)
    port = ExposedPort(guest_port=op.guest_port, protocol=op.protocol, host_port=host_port)
    slot = ctx.addresses.slot(rec.slot)
    return Change(
        reply=port, rows=(PortAdded(rec.sandbox_id, port),),
        nft=tuple(el.add([el.port_element(slot, op.protocol.value, host_port, op.guest_port)])),
        events=(Event("port_exposed", rec.sandbox_id, {"port": port.model_dump(mode="json")}),),
        port_cursor=None if op.host_port is not None else (op.protocol, inv.next_cursor(host_port)))


def plan_unexpose(inv: Inventory, op: ops.Unexpose, ctx: PlanContext) -> Change:
    rec = require(inv, op.sandbox_id)
    port = rec.ports.get((op.guest_port, op.protocol))
    if port is None:
        return Change(reply=False)
    slot = ctx.addresses.slot(rec.slot)
    return Change(
        reply=True, rows=(PortDeleted(rec.sandbox_id, port),),
        nft=tuple(el.delete([el.port_element(slot, port.protocol.value, port.host_port, port.guest_port)])),
        events=(Event("port_unexposed", rec.sandbox_id, {"port": port.model_dump(mode="json")}),))


def plan_port_access(inv: Inventory, op: ops.SetPortAccess) -> Change:
    """A port's edge access (exposed or not yet); the registry publishes it.
    No element: the edge enforces it. Refused if it would leave a private
    port without a token."""
    rec = require(inv, op.sandbox_id)
    access = rec.access.get(op.guest_port, PortAccess()).with_changes(
        op.public, op.token_sha256, op.host_mask, op.mode, op.token_fits_sni)
    return Change(reply=access, rows=(PortAccessSet(rec.sandbox_id, op.guest_port, access),))


def plan_set_paused(inv: Inventory, op: ops.SetPaused) -> Change:
    """Paused or running, published in the registry record; no element (the VM is the
    orchestrator's). Replies whether anything changed: a repeated call writes nothing."""
    rec = require(inv, op.sandbox_id)
    if (rec.paused, rec.wake) == (op.paused, op.wake):
        return Change(reply=False)
    return Change(reply=True, rows=(PausedSet(rec.sandbox_id, op.paused, op.wake),))


def plan_reachability(inv: Inventory, op: ops.RecordReachability, ctx: PlanContext) -> Change:
    rows: list[ReachabilitySet] = []
    events: list[Event] = []
    for r in op.ports:
        rec = inv.allocations.get(r.sandbox_id)
        port = rec.ports.get((r.guest_port, Protocol.TCP)) if rec else None
        if port is None:
            continue  # released or unexposed meanwhile
        rows.append(ReachabilitySet(r.sandbox_id, r.guest_port, r.reachable, r.changed_at))
        view = ctx.port_view(r.sandbox_id, port)
        events.append(Event("port_reachability", r.sandbox_id,
                            {"port": view.model_dump(mode="json"), "reachable": r.reachable}))
    return Change(rows=tuple(rows), events=tuple(events))


def plan_denied(inv: Inventory, op: ops.RecordDenied) -> Change:
    return Change(events=tuple(
        Event("flow_denied", f.sandbox_id, {"denied": {"reason": f.reason, "destination": f.destination,
                                                       "protocol": f.protocol, "port": f.port}})
        for f in op.flows if f.sandbox_id in inv.allocations))


REQUEST_FIELDS = ("method", "host", "path", "status", "bytes_in", "bytes_out", "duration_ms", "rule", "action",
                  "transform", "tls")


def plan_requests(inv: Inventory, op: ops.RecordRequests) -> Change:
    """One http_request event per record of an allocated sandbox (only the
    record's known fields: never anything else the log line might carry), and
    how far the interceptor's files are read, in the same transaction (a
    restart resumes there: intercept/requestlog.py)."""
    return Change(rows=(MetaSet(ops.REQUESTS_READ_TO, op.read_to),) if op.read_to else (), events=tuple(
        Event("http_request", r["sandbox"], {"request": {k: r.get(k) for k in REQUEST_FIELDS}})
        for r in op.records if r.get("sandbox") in inv.allocations))


def plan_verdicts(inv: Inventory, op: ops.RecordVerdicts) -> Change:
    """One first_payload_verdicts event per allocated sandbox, its destinations sorted."""
    by_sandbox: dict[str, list[dict[str, object]]] = {}
    for c in sorted(op.counts, key=lambda c: (c.sandbox_id, c.destination, c.reason)):
        if c.sandbox_id in inv.allocations:
            by_sandbox.setdefault(c.sandbox_id, []).append(
                {"destination": c.destination, "reason": c.reason, "allowed": c.allowed, "denied": c.denied})
    return Change(events=tuple(Event("first_payload_verdicts", sid, {"verdicts": v}) for sid, v in by_sandbox.items()))


def plan_slot_ready(op: ops.SlotReady, ctx: PlanContext) -> Change:
    return Change(rows=(SlotSet(op.slot, SlotState.READY),),
                  nft=tuple(el.add(el.slot_elements(ctx.addresses.slot(op.slot)))))


def plan_slot_gone(op: ops.SlotGone, ctx: PlanContext) -> Change:
    return Change(rows=(SlotSet(op.slot, SlotState.DESTROYING),),
                  nft=tuple(el.delete(el.slot_elements(ctx.addresses.slot(op.slot)))))


def plan_incidents(inv: Inventory, op: ops.SlotIncidents) -> Change:
    """Events for what continuous reconcile found; a slot without its netns is
    quarantined (never handed out again, even after release)."""
    def owner(idx: int) -> str:
        return inv.slot_owner.get(idx, "")
    events = [Event("slot_repaired", owner(i), {"slot": {"index": i, "fixed": list(f)}}) for i, f in op.repaired]
    events += [Event("tap_lost", owner(i), {"slot": {"index": i, "fixed": []}}) for i in op.tap_lost]
    quarantine = [i for i in op.quarantined if inv.slots.get(i) in (SlotState.READY, SlotState.ALLOCATED)]
    events += [Event("slot_quarantined", owner(i), {"slot": {"index": i, "fixed": []}}) for i in quarantine]
    return Change(rows=tuple(SlotSet(i, SlotState.QUARANTINED) for i in quarantine), events=tuple(events))


def desired_elements(inv: Inventory, addresses: AddressPlan) -> list[el.Element]:
    """Every per-slot and per-allocation element the state calls for."""
    out: list[el.Element] = []
    for idx, state in sorted(inv.slots.items()):
        if state in LIVE_SLOT_STATES:
            out += el.slot_elements(addresses.slot(idx))
    for rec in inv.allocations.values():
        slot = addresses.slot(rec.slot)
        out += allocation_elements(slot, rec) + el.usage_elements(str(slot.sandbox_ip))
    return out

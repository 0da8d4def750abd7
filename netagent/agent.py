"""The core API: allocate, release, get, list, expose, unexpose.

All changes to nft elements and to state go through one committer task. It
takes every queued operation (a burst), plans them against the in-memory state,
and applies the burst as one SQLite transaction and one nft transaction. A
failed nft transaction rolls the SQLite transaction and the memory back, so a
caller sees either the whole change or none of it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import netns
from .access import PortAccess
from .addressing import CT_MARK_INGRESS, AddressPlan
from .config import Config
from .datapath import conntrack
from .datapath.host import HostInfo, apply_sysctls, discover
from .datapath.slot_builder import SlotBuilder
from .denied_flows import DeniedFlowLog
from .dns.proxy import DnsProxy, UpstreamClient, bind_sockets, query_tcp_blocking, upstream_socket
from .dns.proxy import serve as serve_dns
from .errors import Conflict, Exhausted, InvalidArgument, NetagentError, NotFound, Unavailable
from .events import EventLog
from .firewall import elements as el
from .firewall import nft as nft_mod
from .firewall import ruleset
from .logs import for_sandbox
from .metrics import Metrics
from .models import (
    AllocateSpec,
    EgressPolicy,
    ExposedPort,
    Network,
    Protocol,
    SlotState,
    validate_port,
    validate_protocol,
    validate_sandbox_id,
)
from .policy import CompiledPolicy, compile_policy, narrows
from .reachability.schedule import PortProbe
from .reachability.tracker import Reachability
from .state import AllocationRecord, StateStore, Tx
from .workers import BuildPool, Cleaner, DnsThreads, HostWorker

log = logging.getLogger("netagent")


@dataclass
class _Op:
    kind: str
    args: dict[str, Any]
    future: asyncio.Future[Any]
    result: Any = None


def one_op_per_sandbox(queued: list[_Op]) -> tuple[list[_Op], list[_Op]]:
    """Splits the queue into this burst and the rest: at most one op per
    sandbox in a burst. Two ops on one sandbox in one nft transaction delete
    and re-add the same elements, which the kernel refuses (EBUSY/ENOENT),
    failing the whole burst. A sandbox's later ops wait, in order."""
    burst: list[_Op] = []
    later: list[_Op] = []
    touched: set[str] = set()
    for op in queued:
        sid = op.args.get("sandbox_id")
        if sid is not None and sid in touched:
            later.append(op)
            continue
        burst.append(op)
        if sid is not None:
            touched.add(sid)
    return burst, later


@dataclass
class _Plan:
    """What one burst does: nft ops, undo steps for memory, work after commit."""
    nft: list[el.Op] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)
    cleanups: list[int] = field(default_factory=list)   # slots whose conntrack must be flushed
    flush_marks: list[int] = field(default_factory=list)  # flushed before the callers return
    drop_fqdn: list[str] = field(default_factory=list)    # sandboxes whose DNS admissions end now
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)  # hooks once committed
    full_sync: bool = False


class Agent:
    def __init__(self, config: Config, rules_dir: Any = ruleset.RULES_DIR):
        self.config = config
        self.plan = AddressPlan(config)
        self.host_source = ruleset.read_rules(ruleset.HOST_RULES, rules_dir)
        self.builder = SlotBuilder(config, self.plan, ruleset.read_rules(ruleset.SLOT_RULES, rules_dir))
        self.store = StateStore(config.state_dir)
        self.host = HostWorker(config.host_netns)
        self.builds = BuildPool(config.host_netns, config.pool_build_concurrency)
        self.cleaner = Cleaner(config.host_netns)
        self.dns_threads = DnsThreads(config.host_netns)
        self.host_info: HostInfo | None = None
        self.events = EventLog(self.store, config.events_retained)
        self.metrics = Metrics(per_sandbox_labels=config.metrics_per_sandbox)
        self.slots: dict[int, SlotState] = {}
        self.allocations: dict[str, AllocationRecord] = {}
        self.ready: deque[int] = deque()
        self.ports_used: dict[Protocol, dict[int, str]] = {p: {} for p in Protocol}
        self._port_cursor = {p: config.host_port_range[0] for p in Protocol}
        self._pending: list[_Op] = []
        self._wake = asyncio.Event()
        self._pool_wake = asyncio.Event()
        self._slot_built = asyncio.Event()
        self._db_lock = asyncio.Lock()
        self._inflight: dict[tuple[str, str], asyncio.Future[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._building = 0
        self._committing = False
        self._last_call = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self.ruleset_fingerprint: str | None = None
        self.slot_owner: dict[int, str] = {}
        self._admitted: dict[tuple[str, str], float] = {}  # (sandbox IP, address) -> expiry (monotonic)
        self.dns: DnsProxy | None = None
        self.reachability = Reachability(self)
        self.denied = DeniedFlowLog(self)
        self._dns_servers: Any = None
        self.stats: dict[str, Any] = {"ruleset_restores": 0, "reconcile_repairs": 0, "last_reconcile": None}

    # ---- lifecycle -------------------------------------------------------

    async def start(self, fill_pool: bool = True) -> None:
        from .reconcile import reconcile
        self.host_info = await self.host.call(self._host_setup)
        await self._start_dns_proxy()
        self._tasks.append(asyncio.create_task(self._committer(), name="netagent-committer"))
        await reconcile(self)
        await self.reachability.start()
        if self.config.denied_flow_events:
            await self.denied.start()
        self._tasks.append(asyncio.create_task(self._watch_ruleset(), name="netagent-ruleset-watch"))
        if fill_pool:
            self._tasks.append(asyncio.create_task(self._pool_filler(), name="netagent-pool"))

    async def _start_dns_proxy(self) -> None:
        upstreams = [str(u) for u in self.config.dns_upstreams] or resolv_conf_nameservers()
        upstream = UpstreamClient(lambda q, up, t: self.dns_threads.call(query_tcp_blocking, q, up, t))
        sock = await self.host.call(upstream_socket)  # the socket keeps the host netns
        upstream_transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: upstream, sock=sock)
        self.dns = DnsProxy(self.resolver_policy_of, self.admit_fqdn, upstream.query, upstreams,
                            self.config.dns_ttl_floor_s, self.config.dns_ttl_cap_s)
        udp, tcp = await self.host.call(bind_sockets, self.config.dns_proxy_port)
        self._dns_servers = (*await serve_dns(self.dns, udp, tcp), upstream_transport)

    def resolver_policy_of(self, sandbox_ip: str) -> CompiledPolicy | None:
        """The policy of the sandbox using this address, for its resolver (None: none)."""
        try:
            sid = self.slot_owner.get(self.plan.index_of_sandbox_ip(sandbox_ip))
        except ValueError:
            return None
        rec = self.allocations.get(sid) if sid else None
        return compile_policy(rec.policy, self.config.default_internet) if rec else None

    async def admit_fqdn(self, sandbox_ip: str, addresses: list[tuple[str, int]]) -> None:
        """Let the sandbox reach these answered addresses for their TTL (fresh
        timeout even if already admitted). An address whose admission still has
        at least half of the new TTL to run is left as it is: no transaction."""
        now = time.monotonic()
        addresses = [(a, ttl) for a, ttl in addresses
                     if self._admitted.get((sandbox_ip, a), 0.0) < now + ttl / 2]
        if not addresses:
            return
        for a, ttl in addresses:
            self._admitted[(sandbox_ip, a)] = now + ttl
        items = [{"elem": {"val": {"concat": [sandbox_ip, a]}, "timeout": ttl}} for a, ttl in addresses]
        keys = [{"concat": [sandbox_ip, a]} for a, _ in addresses]
        target = {"family": "inet", "table": self.config.prefix, "name": "fqdn_ips"}
        doc = {"nftables": [{"add": {"element": {**target, "elem": items}}},
                            {"delete": {"element": {**target, "elem": keys}}},
                            {"add": {"element": {**target, "elem": items}}}]}
        await self.host.call(self._apply_json, doc)

    def _drop_fqdn(self, sandbox_ip: str) -> None:
        """Cleaner thread: forget every address a sandbox was admitted to."""
        for key in [k for k in list(self._admitted) if k[0] == sandbox_ip]:
            self._admitted.pop(key, None)
        nft = self.cleaner.nft()
        gone = [e for e in nft.list_set(self.config.prefix, "fqdn_ips") if _fqdn_ip(e) == sandbox_ip]
        if gone:
            keys = [{"concat": _fqdn_key(e)} for e in gone]
            nft.run_json({"nftables": [{"delete": {"element": {
                "family": "inet", "table": self.config.prefix, "name": "fqdn_ips", "elem": keys}}}]})

    def _host_setup(self) -> HostInfo:
        apply_sysctls()
        return discover(self.builder.host_ipr(), self.config.uplink)

    async def wait_pool_ready(self, timeout: float = 60.0, at_least: int | None = None) -> None:
        deadline = time.monotonic() + timeout
        want = self.config.pool_size if at_least is None else at_least
        while len(self.ready) < min(want, self.plan.capacity - len(self.allocations)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"pool has {len(self.ready)} of {self.config.pool_size} slots")
            await asyncio.sleep(0.02)

    async def refresh_metrics(self) -> None:
        """Gauges from memory; per-sandbox bytes from one link dump (cleaner thread)."""
        by_state: dict[str, int] = {}
        for state in self.slots.values():
            by_state[state.value] = by_state.get(state.value, 0) + 1
        self.metrics.set_state(by_state, len(self.ready), len(self.allocations), self.plan.capacity)
        veths = {sid: self.plan.host_veth(rec.slot) for sid, rec in self.allocations.items()}
        ready = [self.plan.host_veth(i) for i in self.ready]
        await self.cleaner.call(lambda: self.metrics.refresh_link_stats(self.builder.host_ipr(), veths, ready))
        drops = await self.cleaner.call(lambda: self.cleaner.nft().counters(self.config.prefix))
        self.metrics.set_drop_counters({k: v for k, v in drops.items() if k.startswith("drop_")})

    def pool_changed(self) -> None:
        """The pool size changed (SIGHUP): refill, or let releases shrink it."""
        self._pool_wake.set()

    def healthy(self) -> bool:
        """For the systemd watchdog: the committer and the ruleset watcher run."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def stop(self) -> None:
        """Stop background work. The datapath stays exactly as it is."""
        committer, others = self._tasks[0], self._tasks[1:]
        for task in others:
            task.cancel()
        for server in self._dns_servers or ():
            server.close()
        await asyncio.gather(*others, return_exceptions=True)
        await self.reachability.stop()
        await self.denied.stop()
        while self._pending or self._committing or self._background:  # let queued work finish
            if self._background:
                await asyncio.wait(set(self._background), timeout=30)
            await asyncio.sleep(0.01)
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)
        self._tasks.clear()
        self.builds.shutdown()
        self.cleaner.shutdown()
        self.dns_threads.shutdown()
        self.host.shutdown()
        self.store.close()

    # ---- public API ------------------------------------------------------

    async def allocate(self, sandbox_id: str, spec: AllocateSpec | dict[str, Any] | None = None) -> Network:
        validate_sandbox_id(sandbox_id)
        spec = AllocateSpec.parse(spec)
        self._validate_policy(spec.policy)
        rec = self.allocations.get(sandbox_id)
        if rec is not None:
            return self._existing(rec, spec)
        key = ("allocate", sandbox_id)
        if key in self._inflight:
            net = await asyncio.shield(self._inflight[key])
            return self._existing(self.allocations[net.sandbox_id], spec)
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        started = time.perf_counter()
        try:
            warm = bool(self.ready)
            slot = await self._take_slot()
            try:
                net = await self._submit("allocate", future, sandbox_id=sandbox_id, spec=spec, slot=slot)
            except BaseException:
                self._return_slot(slot)
                raise
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved
            raise
        finally:
            self._inflight.pop(key, None)
        self.metrics.observe_allocate(time.perf_counter() - started, warm)
        return net

    async def release(self, sandbox_id: str) -> bool:
        """Release a sandbox's network. Returns False if it was not allocated."""
        validate_sandbox_id(sandbox_id)
        pending = self._inflight.get(("allocate", sandbox_id))
        if pending is not None:
            await asyncio.gather(asyncio.shield(pending), return_exceptions=True)
        if sandbox_id not in self.allocations:
            return False
        key = ("release", sandbox_id)
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        future = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        started = time.perf_counter()
        try:
            released = await self._submit("release", future, sandbox_id=sandbox_id)
        finally:
            self._inflight.pop(key, None)
        self.metrics.observe_release(time.perf_counter() - started)
        return released

    async def get(self, sandbox_id: str) -> Network:
        validate_sandbox_id(sandbox_id)
        rec = self.allocations.get(sandbox_id)
        if rec is None:
            raise NotFound(f"sandbox {sandbox_id!r} is not allocated on this host")
        return self._network(rec)

    async def list(self, labels: dict[str, str] | None = None) -> list[Network]:
        labels = labels or {}
        return [self._network(rec) for rec in sorted(self.allocations.values(), key=lambda r: r.slot)
                if all(rec.spec.labels.get(k) == v for k, v in labels.items())]

    async def expose(self, sandbox_id: str, guest_port: int, protocol: str = "tcp",
                     host_port: int | None = None) -> int:
        validate_sandbox_id(sandbox_id)
        validate_port(guest_port, "guest_port")
        proto = validate_protocol(protocol)
        if host_port is not None:
            validate_port(host_port, "host_port")
            lo, hi = self.config.host_port_range
            if not lo <= host_port <= hi:
                raise InvalidArgument(f"host_port {host_port} is outside the configured range {lo}-{hi}")
        rec = self._require(sandbox_id)
        existing = rec.ports.get((guest_port, proto))
        if existing is not None:
            if host_port not in (None, existing.host_port):
                raise Conflict(f"{proto.value}/{guest_port} of {sandbox_id} is already exposed on "
                               f"host port {existing.host_port}")
            return existing.host_port
        future = asyncio.get_running_loop().create_future()
        port = await self._submit("expose", future, sandbox_id=sandbox_id, guest_port=guest_port,
                                  protocol=proto, host_port=host_port)
        return port.host_port

    async def set_port_access(self, sandbox_id: str, guest_port: int, *, public: bool | None = None,
                              access_token: str | None = None, host_mask: str | None = None) -> PortAccess:
        """Edge access of a guest port (exposed or not yet): public, or private with a token
        (only its SHA-256 is kept), and the Host the guest sees. None leaves a field as it is."""
        validate_sandbox_id(sandbox_id)
        validate_port(guest_port, "guest_port")
        self._require(sandbox_id)
        current = self.reachability.access.get((sandbox_id, guest_port), PortAccess())
        access = current.updated(public, access_token, host_mask)
        async with self._db_lock:
            self.store.set_port_access(sandbox_id, guest_port, access)
        self.reachability.on_access_changed(sandbox_id, guest_port, access)
        return access

    async def unexpose(self, sandbox_id: str, guest_port: int, protocol: str = "tcp") -> bool:
        validate_sandbox_id(sandbox_id)
        validate_port(guest_port, "guest_port")
        proto = validate_protocol(protocol)
        rec = self._require(sandbox_id)
        if (guest_port, proto) not in rec.ports:
            return False
        future = asyncio.get_running_loop().create_future()
        return await self._submit("unexpose", future, sandbox_id=sandbox_id, guest_port=guest_port,
                                  protocol=proto)

    async def update_policy(self, sandbox_id: str, policy: EgressPolicy | dict[str, Any] | None) -> Network:
        """Replace the sandbox's egress policy in one transaction. When it narrows,
        the flows it no longer allows are flushed before this returns."""
        validate_sandbox_id(sandbox_id)
        policy = EgressPolicy.parse(policy)
        self._validate_policy(policy)
        self._require(sandbox_id)
        future = asyncio.get_running_loop().create_future()
        return await self._submit("policy", future, sandbox_id=sandbox_id, policy=policy)

    async def probe(self, sandbox_id: str, guest_port: int, timeout: float | None = None) -> dict[str, Any]:
        """Probe a guest port now (exposed or not); nothing is stored."""
        validate_sandbox_id(sandbox_id)
        validate_port(guest_port, "guest_port")
        if timeout is not None and not 0 < timeout <= 10:
            raise InvalidArgument("timeout must be in (0, 10] seconds")
        rec = self._require(sandbox_id)
        result = await self.reachability.probe_now(sandbox_id, guest_port, timeout)
        exposed = rec.ports.get((guest_port, Protocol.TCP))
        return {"reachable": result.reachable, "outcome": result.outcome, "rtt_s": result.rtt_s,
                "host_port": exposed.host_port if exposed else 0}

    async def record_reachability(self, ports: list[PortProbe]) -> None:
        """Store reachability changes with their events (called by the prober's tracker)."""
        await self._submit("reachability", asyncio.get_running_loop().create_future(), ports=ports)

    async def record_denied(self, flows: list[tuple[str, dict[str, Any]]]) -> None:
        """Store FLOW_DENIED events (called by the denied-flow log)."""
        await self._submit("denied", asyncio.get_running_loop().create_future(), flows=flows)

    async def resync(self) -> dict[str, Any]:
        """Reload the ruleset if it drifted and re-add every element, atomically."""
        await self._submit("resync", asyncio.get_running_loop().create_future())
        return {"ruleset_reloaded": self.stats["last_sync_reloaded"], "elements": len(self.desired_elements())}

    async def repair(self) -> dict[str, Any]:
        """Operator repair (Resync RPC): the host table and elements, and every registry record."""
        result = await self.resync()
        self.reachability.republish()
        return result

    # ---- helpers ---------------------------------------------------------

    def _validate_policy(self, policy: EgressPolicy) -> CompiledPolicy:
        """Validate the whole policy (nothing applies if one entry is bad)."""
        return compile_policy(policy, self.config.default_internet)

    def _policy_elements(self, rec: AllocationRecord) -> list[el.Element]:
        return el.policy_elements(self.plan.slot(rec.slot), compile_policy(rec.policy))

    def resolve_policy(self, policy: EgressPolicy) -> EgressPolicy:
        """Freeze host defaults into the policy, so a later default change does
        not silently change running sandboxes."""
        if policy.internet is None:
            return policy.model_copy(update={"internet": self.config.default_internet})
        return policy

    def _require(self, sandbox_id: str) -> AllocationRecord:
        rec = self.allocations.get(sandbox_id)
        if rec is None:
            raise NotFound(f"sandbox {sandbox_id!r} is not allocated on this host")
        return rec

    def _existing(self, rec: AllocationRecord, spec: AllocateSpec) -> Network:
        if rec.spec != spec:
            raise Conflict(f"sandbox {rec.sandbox_id!r} is already allocated with a different spec")
        return self._network(rec)

    def _network(self, rec: AllocationRecord) -> Network:
        s = self.plan.slot(rec.slot)
        g = self.config.guest
        return Network(
            sandbox_id=rec.sandbox_id, slot=rec.slot, netns=s.netns, netns_path=netns.path_of(s.netns),
            tap=g.tap_name, guest_ip=str(g.guest_ip), guest_prefixlen=g.prefixlen,
            guest_netmask=self.plan.boot_ip_arg().split(":")[3], gateway_ip=str(g.gateway_ip),
            guest_mac=g.guest_mac, mtu=g.mtu, sandbox_ip=str(s.sandbox_ip), host_veth=s.host_veth,
            boot_ip_arg=self.plan.boot_ip_arg(dns=str(g.gateway_ip)), spec=rec.spec, policy=rec.policy,
            internet=bool(rec.policy.internet), created_at=rec.created_at,
            ports=tuple(self.reachability.port_view(rec.sandbox_id, p)
                        for p in sorted(rec.ports.values(), key=lambda p: (p.protocol.value, p.guest_port))))

    async def _submit(self, kind: str, future: asyncio.Future[Any], **args: Any) -> Any:
        if kind not in ("slot_ready", "slot_gone", "resync", "reachability", "denied"):
            self._last_call = time.monotonic()
        self._pending.append(_Op(kind, args, future))
        self._wake.set()
        return await asyncio.shield(future)

    # ---- the committer ---------------------------------------------------

    async def _committer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = one_op_per_sandbox(self._pending)
            if self._pending:
                self._wake.set()
            if batch:
                self._committing = True
                try:
                    await self._commit(batch)
                except Exception as exc:  # never let the committer die
                    log.exception("commit failed")
                    for op in batch:
                        if not op.future.done():
                            op.future.set_exception(Unavailable(f"commit failed: {exc}"))
                finally:
                    self._committing = False

    async def _commit(self, batch: list[_Op]) -> None:
        plan = _Plan()
        accepted: list[_Op] = []
        self.stats["commits"] = self.stats.get("commits", 0) + 1
        async with self._db_lock:
            self.store.db.execute("BEGIN IMMEDIATE")
            tx = Tx(self.store.db)
            for op in batch:
                try:
                    op.result = getattr(self, f"_plan_{op.kind}")(op.args, tx, plan)
                    accepted.append(op)
                except NetagentError as exc:
                    op.future.set_exception(exc)
            try:
                if plan.full_sync:
                    self.metrics.observe_nft(await self.host.call(self._apply_full_sync))
                elif plan.nft:
                    doc = el.to_json(self.config.prefix, plan.nft)
                    self.metrics.observe_nft(await self.host.call(self._apply_json, doc))
            except BaseException as exc:
                log.warning("burst of %d op(s) rolled back: %r", len(accepted), exc)
                self.store.db.execute("ROLLBACK")
                for undo in reversed(plan.undo):
                    undo()
                err = exc if isinstance(exc, NetagentError) else Unavailable(f"{type(exc).__name__}: {exc}")
                for op in accepted:
                    op.future.set_exception(err)
                if not isinstance(exc, Exception):
                    raise
                return
            if plan.full_sync:
                self.store.set_meta("ruleset_fingerprint", self.ruleset_fingerprint or "")
            published = [self.events.record(type_, sid, data) for type_, sid, data in plan.events]
            self.store.db.execute("COMMIT")
        self.events.publish(published)
        for hook in plan.after:
            hook()
        if plan.drop_fqdn:
            ips = list(plan.drop_fqdn)
            await self.cleaner.call(lambda: [self._drop_fqdn(ip) for ip in ips])
        if plan.flush_marks:
            marks = list(plan.flush_marks)
            await self.cleaner.call(lambda: [conntrack.flush_mark(m) for m in marks])
        if plan.cleanups:
            self._spawn(self._clean_slots(plan.cleanups))
        for op in accepted:
            if not op.future.done():
                op.future.set_result(op.result)
            if sid := op.args.get("sandbox_id"):
                for_sandbox(log, sid, op=op.kind).info("%s done", op.kind)

    def _plan_allocate(self, a: dict[str, Any], tx: Tx, plan: _Plan) -> Network:
        sid, slot = a["sandbox_id"], a["slot"]
        if sid in self.allocations:
            raise Conflict(f"sandbox {sid!r} was allocated concurrently")
        rec = AllocationRecord(sid, slot, a["spec"], time.time(), self.resolve_policy(a["spec"].policy))
        tx.set_slot(slot, SlotState.ALLOCATED)
        tx.add_allocation(rec)
        self.allocations[sid] = rec
        self.slot_owner[slot] = sid
        self.slots[slot] = SlotState.ALLOCATED
        plan.undo.append(lambda: (self.allocations.pop(sid, None), self.slot_owner.pop(slot, None),
                                  self.slots.__setitem__(slot, SlotState.READY)))
        plan.nft += el.add(self._policy_elements(rec))
        net = self._network(rec)
        plan.events.append(("allocated", sid, {"sandbox": net.model_dump(mode="json")}))
        plan.after.append(lambda: self.reachability.on_allocated(rec))
        return net

    def _plan_release(self, a: dict[str, Any], tx: Tx, plan: _Plan) -> bool:
        rec = self.allocations.get(a["sandbox_id"])
        if rec is None:
            return False
        slot = self.plan.slot(rec.slot)
        gone = self._policy_elements(rec)
        gone += [el.port_element(slot, p.protocol.value, p.host_port, p.guest_port) for p in rec.ports.values()]
        tx.delete_allocation(rec.sandbox_id)
        tx.set_slot(rec.slot, SlotState.DIRTY)
        del self.allocations[rec.sandbox_id]
        self.slot_owner.pop(rec.slot, None)
        self.slots[rec.slot] = SlotState.DIRTY
        for p in rec.ports.values():
            self.ports_used[p.protocol].pop(p.host_port, None)

        def undo() -> None:
            self.allocations[rec.sandbox_id] = rec
            self.slot_owner[rec.slot] = rec.sandbox_id
            self.slots[rec.slot] = SlotState.ALLOCATED
            for p in rec.ports.values():
                self.ports_used[p.protocol][p.host_port] = rec.sandbox_id
        plan.undo.append(undo)
        plan.nft += el.delete(gone)
        plan.cleanups.append(rec.slot)
        plan.events.append(("released", rec.sandbox_id, {}))
        plan.after.append(lambda: self.reachability.on_released(rec.sandbox_id))
        return True

    def _plan_policy(self, a: dict[str, Any], tx: Tx, plan: _Plan) -> Network:
        rec = self._require(a["sandbox_id"])
        old, new = rec.policy, self.resolve_policy(a["policy"])
        slot = self.plan.slot(rec.slot)
        old_c, new_c = compile_policy(old), compile_policy(new)
        if old_c != new_c:
            plan.nft += el.delete(el.policy_elements(slot, old_c)) + el.add(el.policy_elements(slot, new_c))
        if narrows(old_c, new_c):
            plan.flush_marks.append(slot.ct_mark)  # only flows the sandbox started
            if set(old_c.domains) - set(new_c.domains):
                plan.drop_fqdn.append(str(slot.sandbox_ip))
        tx.set_policy(rec.sandbox_id, new)
        rec.policy = new
        plan.undo.append(lambda: setattr(rec, "policy", old))
        net = self._network(rec)
        plan.events.append(("policy_updated", rec.sandbox_id, {"sandbox": net.model_dump(mode="json")}))
        return net

    def _plan_expose(self, a: dict[str, Any], tx: Tx, plan: _Plan) -> ExposedPort:
        rec = self._require(a["sandbox_id"])
        proto: Protocol = a["protocol"]
        existing = rec.ports.get((a["guest_port"], proto))
        if existing is not None:
            return existing
        host_port = self._pick_host_port(proto, a["host_port"])
        port = ExposedPort(guest_port=a["guest_port"], protocol=proto, host_port=host_port)
        tx.add_port(rec.sandbox_id, port)
        rec.ports[(port.guest_port, proto)] = port
        self.ports_used[proto][host_port] = rec.sandbox_id
        plan.undo.append(lambda: (rec.ports.pop((port.guest_port, proto), None),
                                  self.ports_used[proto].pop(host_port, None)))
        plan.nft += el.add([el.port_element(self.plan.slot(rec.slot), proto.value, host_port, port.guest_port)])
        plan.events.append(("port_exposed", rec.sandbox_id, {"port": port.model_dump(mode="json")}))
        plan.after.append(lambda: self.reachability.on_exposed(rec, port))
        return port

    def _plan_unexpose(self, a: dict[str, Any], tx: Tx, plan: _Plan) -> bool:
        rec = self._require(a["sandbox_id"])
        port = rec.ports.get((a["guest_port"], a["protocol"]))
        if port is None:
            return False
        tx.delete_port(rec.sandbox_id, port)
        del rec.ports[(port.guest_port, port.protocol)]
        self.ports_used[port.protocol].pop(port.host_port, None)
        plan.undo.append(lambda: (rec.ports.__setitem__((port.guest_port, port.protocol), port),
                                  self.ports_used[port.protocol].__setitem__(port.host_port, rec.sandbox_id)))
        plan.nft += el.delete([el.port_element(self.plan.slot(rec.slot), port.protocol.value,
                                               port.host_port, port.guest_port)])
        plan.events.append(("port_unexposed", rec.sandbox_id, {"port": port.model_dump(mode="json")}))
        plan.after.append(lambda: self.reachability.on_unexposed(rec.sandbox_id, port))
        return True

    def _plan_denied(self, a: dict[str, Any], tx: Tx, plan: _Plan) -> None:
        plan.events += [("flow_denied", sid, {"denied": data}) for sid, data in a["flows"]
                        if sid in self.allocations]

    def _plan_reachability(self, a: dict[str, Any], tx: Tx, plan: _Plan) -> None:
        for probe in a["ports"]:
            rec = self.allocations.get(probe.sandbox_id)
            port = rec.ports.get((probe.guest_port, Protocol.TCP)) if rec else None
            if port is None or probe.reachable is None:
                continue  # released or unexposed meanwhile
            tx.set_reachability(probe.sandbox_id, probe.guest_port, probe.reachable, probe.changed_at)
            view = self.reachability.port_view(probe.sandbox_id, port)
            plan.events.append(("port_reachability", probe.sandbox_id,
                                {"port": view.model_dump(mode="json"), "reachable": probe.reachable}))

    def _plan_slot_ready(self, a: dict[str, Any], tx: Tx, plan: _Plan) -> None:
        idx = a["slot"]
        tx.set_slot(idx, a.get("state", SlotState.READY))
        prev = self.slots.get(idx)
        self.slots[idx] = a.get("state", SlotState.READY)
        plan.undo.append(lambda: self.slots.__setitem__(idx, prev) if prev else self.slots.pop(idx, None))
        plan.nft += el.add(el.slot_elements(self.plan.slot(idx)))

    def _plan_slot_gone(self, a: dict[str, Any], tx: Tx, plan: _Plan) -> None:
        idx = a["slot"]
        tx.set_slot(idx, SlotState.DESTROYING)
        self.slots[idx] = SlotState.DESTROYING
        plan.nft += el.delete(el.slot_elements(self.plan.slot(idx)))

    def _plan_resync(self, a: dict[str, Any], tx: Tx, plan: _Plan) -> None:
        plan.full_sync = True

    def _pick_host_port(self, proto: Protocol, wanted: int | None) -> int:
        used = self.ports_used[proto]
        if wanted is not None:
            if wanted in used:
                raise Conflict(f"host port {proto.value}/{wanted} is already used by sandbox {used[wanted]!r}")
            return wanted
        lo, hi = self.config.host_port_range
        size = hi - lo + 1
        if len(used) >= size:
            raise Exhausted(f"no free {proto.value} host port in {lo}-{hi}")
        port = self._port_cursor[proto]
        for _ in range(size):
            if port not in used:
                self._port_cursor[proto] = lo + (port + 1 - lo) % size
                return port
            port = lo + (port + 1 - lo) % size
        raise Exhausted(f"no free {proto.value} host port in {lo}-{hi}")

    # ---- full sync (reconcile and ruleset repair) --------------------------

    def desired_elements(self) -> list[el.Element]:
        out: list[el.Element] = []
        for idx, state in sorted(self.slots.items()):
            if state in (SlotState.READY, SlotState.ALLOCATED, SlotState.DIRTY):
                out += el.slot_elements(self.plan.slot(idx))
        for rec in self.allocations.values():
            slot = self.plan.slot(rec.slot)
            out += self._policy_elements(rec)
            out += [el.port_element(slot, p.protocol.value, p.host_port, p.guest_port) for p in rec.ports.values()]
        return out

    def _apply_json(self, doc: dict[str, Any]) -> float:
        nft = self.host.nft()
        nft.run_json(doc)
        return nft.last_duration_s

    def _apply_full_sync(self) -> float:
        """Runs on the host worker: one transaction that (re)loads the table if it
        drifted and replaces every element with the state's."""
        assert self.host_info is not None
        nft = self.host.nft()
        fixed = ruleset.config_elements(self.config, self.host_info.uplink, self.host_info.addresses)
        dynamic = self.desired_elements()
        if nft.table_fingerprint(self.config.prefix) == self.ruleset_fingerprint is not None:
            t = self.config.prefix
            flush = "".join(f"flush set inet {t} {s}\n" for s in nft_mod.SETS)
            flush += "".join(f"flush map inet {t} {m}\n" for m in nft_mod.MAPS)
            nft.run(flush + el.to_text(t, fixed) + el.to_text(t, dynamic))
            self.stats["last_sync_reloaded"] = False
        else:
            nft.run(ruleset.full_load_script(self.config, self.host_source, fixed, dynamic))
            self.ruleset_fingerprint = nft.table_fingerprint(self.config.prefix)
            self._admitted.clear()  # a reloaded table has no fqdn_ips
            self.stats["last_sync_reloaded"] = True
        return nft.last_duration_s

    async def _watch_ruleset(self) -> None:
        while True:
            await asyncio.sleep(self.config.ruleset_check_interval_s)
            try:
                fp = await self.host.call(lambda: self.host.nft().table_fingerprint(self.config.prefix))
                if fp != self.ruleset_fingerprint:
                    log.warning("host table %s is %s; restoring it", self.config.prefix,
                                "missing" if fp is None else "changed")
                    await self.resync()
                    self.stats["ruleset_restores"] += 1
                    self.metrics.ruleset_restored()
            except Exception:
                log.exception("ruleset check failed")

    # ---- the warm pool -----------------------------------------------------

    async def _take_slot(self) -> int:
        """A warm slot; else build one now; else wait for a build in flight."""
        self._pool_wake.set()
        while True:
            if self.ready:
                return self.ready.popleft()
            if self._free_index() is not None:
                return await self._build_slot(for_caller=True)
            if not self._building:
                raise Exhausted(f"all {self.plan.capacity} slots of {self.config.transit_cidr} are in use")
            self._slot_built.clear()
            await self._slot_built.wait()

    def _return_slot(self, idx: int) -> None:
        if self.slots.get(idx) == SlotState.READY:
            self.ready.appendleft(idx)

    def _free_index(self) -> int | None:
        for idx in range(self.plan.capacity):
            if idx not in self.slots:
                return idx
        return None

    async def _build_slot(self, for_caller: bool = False) -> int:
        async with self._db_lock:
            idx = self._free_index()
            if idx is None:
                raise Exhausted(f"all {self.plan.capacity} slots of {self.config.transit_cidr} are in use")
            with self.store.transaction() as tx:
                tx.set_slot(idx, SlotState.BUILDING)
            self.slots[idx] = SlotState.BUILDING
        self._building += 1
        try:
            return await self._finish_build(idx, for_caller)
        finally:
            self._building -= 1
            self._slot_built.set()

    async def _finish_build(self, idx: int, for_caller: bool) -> int:
        t0 = time.perf_counter()
        try:
            await self.builds.call(self.builder.build, idx)
        except Exception as exc:
            await self._forget_slot(idx)
            raise Unavailable(f"building slot {idx} failed: {exc}") from exc
        self.metrics.observe_slot_build(time.perf_counter() - t0)
        try:
            await self._submit("slot_ready", asyncio.get_running_loop().create_future(), slot=idx)
        except NetagentError:
            await self.builds.call(self.builder.destroy, idx)
            await self._forget_slot(idx)
            raise
        if not for_caller:
            self.ready.append(idx)
        return idx

    async def _forget_slot(self, idx: int) -> None:
        async with self._db_lock:
            with self.store.transaction() as tx:
                tx.delete_slot(idx)
            self.slots.pop(idx, None)

    async def destroy_slot(self, idx: int) -> None:
        """Tear a slot down: intent first, then elements, kernel objects, row."""
        await self._submit("slot_gone", asyncio.get_running_loop().create_future(), slot=idx)
        await self.builds.call(self.builder.destroy, idx)
        await self._forget_slot(idx)

    async def _clean_slots(self, slots: list[int]) -> None:
        """After release, in the background: flush each slot's conntrack (host by
        ct mark, slot netns fully), check for leftover elements, then return it
        to the pool or tear it down. A host flush walks the kernel's whole
        conntrack hash (~13 ms here), so release does not wait for it, and each
        walk waits for a quiet moment; a DIRTY slot is never handed out."""
        for idx in slots:
            await self._wait_quiet()
            try:
                await self.cleaner.call(self._clean_one, idx)
            except Exception:
                log.exception("cleaning slot %d failed; retrying in 1 s (it stays dirty)", idx)
                await asyncio.sleep(1.0)
                self._spawn(self._clean_slots([idx]))
                continue
            await self._after_clean(idx)

    def _clean_one(self, idx: int) -> None:
        """Cleaner thread."""
        conntrack.flush_mark(self.plan.slot(idx).ct_mark, ~CT_MARK_INGRESS & 0xFFFFFFFF)  # both directions
        self._remove_leftover_egress(idx)
        self._drop_fqdn(str(self.plan.slot(idx).sandbox_ip))
        self.builder.flush_slot_conntrack(idx)

    async def _after_clean(self, idx: int) -> None:
        if len(self.ready) >= self.config.pool_size:
            self._spawn(self._destroy_quietly(idx))
            return
        async with self._db_lock:
            with self.store.transaction() as tx:
                tx.set_slot(idx, SlotState.READY)
            self.slots[idx] = SlotState.READY
        self.ready.append(idx)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _remove_leftover_egress(self, idx: int) -> None:
        """Cleaner thread: a released slot must carry no egress element (one
        added by hand, or by a bug, would let the next tenant out early)."""
        ip = str(self.plan.slot(idx).sandbox_ip)
        nft = self.cleaner.nft()
        if nft.has_element(self.config.prefix, "egress_mode", ip):
            log.warning("slot %d had a leftover egress_mode element for %s; removing it", idx, ip)
            nft.run(f"delete element inet {self.config.prefix} egress_mode {{ {ip} }}")

    async def _destroy_quietly(self, idx: int) -> None:
        try:
            await self.destroy_slot(idx)
        except Exception:
            log.exception("destroying slot %d failed; reconcile will retry", idx)

    async def _wait_quiet(self) -> None:
        """Background work (refill builds, conntrack walks) competes with API
        calls for the CPU and the GIL: let a burst of calls pass first, unless
        the pool runs low."""
        delay = self.config.pool_refill_delay_s
        low = max(1, self.config.pool_size // 4)
        while len(self.ready) >= low and time.monotonic() - self._last_call < delay:
            await asyncio.sleep(delay)

    async def _pool_filler(self) -> None:
        backoff = 0.0
        while True:
            missing = min(self.config.pool_size - len(self.ready) - self._building,
                          self.plan.capacity - len(self.slots))
            if missing <= 0:
                self._pool_wake.clear()
                await self._pool_wake.wait()
                continue
            await self._wait_quiet()
            n = min(missing, self.config.pool_build_concurrency)
            results = await asyncio.gather(*(self._build_slot() for _ in range(n)), return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                backoff = min(max(backoff * 2, 0.1), 5.0)
                log.warning("pool refill: %d build(s) failed: %s; retrying in %.1fs", len(errors), errors[0], backoff)
                await asyncio.sleep(backoff)
            else:
                backoff = 0.0


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1
            and ":" not in ln.split()[1]]


def _fqdn_key(item: Any) -> list[str]:
    val = item["elem"]["val"] if isinstance(item, dict) and "elem" in item else item
    return list(val["concat"])


def _fqdn_ip(item: Any) -> str:
    return _fqdn_key(item)[0]

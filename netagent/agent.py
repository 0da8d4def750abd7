"""The agent: wires the core's owners together, starts and stops them, and
offers the core API (core/api.py: allocate, release, get, list, expose,
unexpose, update_policy, probe, ...) plus resync and repair.

A call is validated into a typed operation (core/ops.py), queued for the one
committer (core/committer.py), planned by the pure planner (core/planner.py)
against the inventory (core/inventory.py), and applied as one SQLite and one
nft transaction through the firewall driver (firewall/driver.py). The warm pool
(core/pool.py), DNS admission (core/admission.py) and the host table keeper
(core/hostsync.py) each own their part; reconcile, the prober and the
denied-flow reader get callables, not the agent.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .addressing import AddressPlan
from .config import Config
from .core import ops
from .core import pool as pool_mod
from .core.admission import DnsAdmission
from .core.aftercommit import CommitEffects
from .core.api import CoreApi
from .core.committer import Burst, Committer
from .core.hostsync import HostTableKeeper
from .core.intercept_api import InterceptApi
from .core.inventory import Inventory
from .core.planner import PlanContext, desired_elements
from .core.pool import Inflight, PoolSettings, WarmPool
from .core.repair import Fix, Repairs
from .core.self_repair import RepairWork, SelfRepair
from .core.views import sandbox_ips
from .datapath import link_counters
from .datapath.host import HostInfo, apply_sysctls, discover
from .datapath.slot_builder import SlotBuilder
from .datapath.slot_repair import SlotRepairIO
from .datapath.slot_work import SlotWork
from .datapath.traffic_work import TrafficWork
from .denied_flows import DeniedFlowLog
from .dns.proxy import DnsProxy
from .dns.startup import start_proxy
from .events import EventLog
from .firewall import elements as el
from .firewall import nflog, nfqueue, ruleset
from .firewall.driver import FirewallDriver
from .firewall.drivers import open_driver
from .firewall.generation import GenerationWatch
from .firewall.loop_batch import LoopBatcher
from .firstpayload.checker import CheckLinks, FirstPayloadCheck
from .flows import recorder as flow_recorder
from .intercept.service import InterceptService
from .metrics import Metrics
from .models import SlotState
from .reachability.tracker import AgentLink, Reachability
from .reconcile import KernelOps, reconcile
from .state import StateStore, checkpoints
from .usage.collector import UsageCollector
from .usage.meter import MeterIO, UsageMeter
from .workers import BuildPool, Cleaner, DnsThreads, HostWorker, Readers

log = logging.getLogger("netagent")


class Agent(CoreApi, InterceptApi, CommitEffects):
    def __init__(self, config: Config, rules_dir: Any = ruleset.RULES_DIR,
                 firewall: Callable[[], FirewallDriver] | None = None):
        self.config = config
        self.plan = AddressPlan(config)
        # The one place the firewall driver is chosen; each worker thread makes its own.
        self.ruleset_generation = GenerationWatch()
        self._make_firewall = firewall or (lambda: open_driver(config.firewall_driver, config.prefix,
                                                               self.ruleset_generation))
        self.host_source = ruleset.read_rules(ruleset.HOST_RULES, rules_dir)
        self.builder = SlotBuilder(config, self.plan, ruleset.read_rules(ruleset.SLOT_RULES, rules_dir))
        self.store = StateStore(config.state_dir)
        self.host = HostWorker(config.host_netns)
        self._loop_batch: LoopBatcher | None = None
        self.builds = BuildPool(config.host_netns, config.pool.build_concurrency)
        self.cleaner = Cleaner(config.host_netns)
        self.readers = Readers(config.host_netns)
        self.dns_threads = DnsThreads(config.host_netns)
        self.host_info: HostInfo | None = None
        self.events = EventLog(self.store, config.events_retained)
        self.metrics = Metrics(per_sandbox_labels=config.metrics.per_sandbox)
        self.inventory = Inventory(config.host_port_range)
        self._db_lock = asyncio.Lock()
        self._last_call = 0.0
        self.committer = Committer(self.store, self.events, self._db_lock, lambda: self.inventory,
                                   self._plan_context, self._apply_burst, self._after_commit)
        self.admission = DnsAdmission(self.plan, lambda: self.inventory, self._on_host_fw)
        self.slot_work = SlotWork(self.plan, self.builder, self.host, self.builds, self.cleaner, self._cleaner_fw,
                                  self.admission.forget, lambda *ids: self.self_repair.learn(*ids))
        self.pool = WarmPool(self.store, self._db_lock, lambda: self.inventory, self.plan.capacity,
                             f"of {config.transit_cidr}", self._pool_settings,
                             pool_mod.PoolWork(self.slot_work.build, self.slot_work.destroy, self.slot_work.clean),
                             self.committer.submit, lambda: self._last_call, self.metrics.observe_slot_build)
        self.keeper = HostTableKeeper(lambda: ruleset.host_table_text(self.config, self.host_source),
                                      self._config_elements, self.admission.clear, self.ruleset_generation)
        self.reachability = Reachability(config, AgentLink(
            allocations=lambda: self.inventory.allocations, slot=self.plan.slot,
            uplink_addresses=lambda: self.host_info.uplink_addresses if self.host_info else [],
            on_host=self.host.call, record=self.record_reachability, expose=self._discovered,
            spawn=self.pool.spawn, known=self.store.load_reachability, instance=self.store.instance_id()),
            self.metrics)
        self.repair_io = SlotRepairIO(self.plan, config.guest, self.builder, self.builds, self.host)
        self.self_repair = SelfRepair(config.prefix, lambda: self.inventory.slots, RepairWork(
            self.repair_io.gather, self.repair_io.repair, self.repair_io.host_links, self._report_incidents),
            config.self_repair_sweep_slots_per_s)
        self.metrics.watch_repair_failures(lambda: self.self_repair.failures)
        self.traffic = TrafficWork(self.plan, self.builder, self.builds, self.cleaner, self._cleaner_fw,
                                   self.readers, self._readers_fw, lambda: self.config.guest)
        self.meter = UsageMeter(self.store, self._db_lock, MeterIO(
            self.traffic.read_usage, self.traffic.read_usage_of, lambda: sandbox_ips(self.inventory, self.plan),
            self._submit))
        self.usage_metrics = UsageCollector(config.metrics.per_sandbox)
        self.link_counters = link_counters.LinkCounters()   # the readers thread's, in the host netns
        self.metrics.registry.register(self.usage_metrics)
        self.flows = flow_recorder.with_metrics(flow_recorder.from_config(
            config, self.plan, self.host.call, self.admission.names_seen), self.metrics.registry)
        self.denied = DeniedFlowLog(lambda: self.host.call(nflog.open_socket), self._sandbox_of_ip, self.record_denied,
                                    self.flows.refused_packet if config.flows.record else None)
        fp = config.first_payload
        self.first_payload = FirstPayloadCheck(fp.queue, CheckLinks(
            lambda: self.host.call(lambda: nfqueue.open_socket(fp.queue)), self.admission.policy_of,
            self.admission.names_for, self._sandbox_of_ip))
        self.first_payload_source = ruleset.read_rules(ruleset.FIRST_PAYLOAD_RULES, rules_dir)
        self.dns: DnsProxy | None = None
        self.intercept = (InterceptService(config, self.record_requests, self._labels_of)
                          if config.intercept.enabled else None)
        self._dns_servers: Any = None
        self._inflight = Inflight()
        self._tasks: list[asyncio.Task[None]] = []
        self._reconciled: dict[str, Any] = {"reconcile_repairs": 0, "last_reconcile": None}

    # ---- views kept for callers and tests ------------------------------------

    @property
    def slots(self) -> Mapping[int, SlotState]:
        return self.inventory.slots

    @property
    def ready(self) -> Any:
        return self.pool.ready

    @property
    def _building(self) -> int:
        return self.pool.building

    @property
    def stats(self) -> dict[str, Any]:
        return {"commits": self.committer.commits, "ruleset_restores": self.keeper.restores,
                "last_sync_reloaded": self.keeper.last_reloaded, **self._reconciled}

    # ---- lifecycle -------------------------------------------------------

    async def start(self, fill_pool: bool = True) -> None:
        await self.reachability.check_node_id()     # before touching the host
        self.host_info = await self.host.call(self._host_setup)
        self._loop_batch = await self.host.call(self._make_loop_batch)
        await self._start_dns_proxy()
        self._tasks.append(asyncio.create_task(self.committer.run(), name="netagent-committer"))
        await self._reconcile()
        if self.intercept is not None:   # rules of allocated sandboxes live again (haproxy if any)
            await self.intercept.resume(sandbox_ips(self.inventory, self.plan))
        await self.reachability.start()
        if self.config.first_payload.check:
            await self._ensure_first_payload()
            await self.first_payload.start()
            self._tasks.append(asyncio.create_task(self.first_payload.publish(
                lambda: self.config.first_payload.verdict_events_s, lambda: self.inventory.allocations,
                lambda counts: self._submit(ops.RecordVerdicts(counts))), name="netagent-verdict-events"))
        if self.config.flows.record:
            await self.flows.start(self.inventory.allocations.values())
        if self.config.denied_flow_events:
            await self.denied.start()
        self._tasks.append(asyncio.create_task(self.keeper.watch(
            lambda: self.config.ruleset_check_interval_s,
            lambda: self.host.call(lambda: self.keeper.current(self._host_fw(), time.monotonic())),
            self.resync, self.metrics.ruleset_restored), name="netagent-ruleset-watch"))
        self._tasks.append(asyncio.create_task(self.meter.run(lambda: self.config.usage_interval_s),
                                               name="netagent-usage"))
        self.store.checkpoint_elsewhere()
        self._tasks.append(asyncio.create_task(checkpoints(self.store), name="netagent-checkpoint"))
        if self.config.self_repair:
            await self.repair_io.listen(self.self_repair.on_notices, self.self_repair.overflowed)
            self._tasks.append(asyncio.create_task(self.self_repair.run(), name="netagent-self-repair"))
        if fill_pool:
            self._tasks.append(asyncio.create_task(self.pool.fill(), name="netagent-pool"))

    async def _reconcile(self) -> None:
        w = self.slot_work
        kernel = KernelOps(w.kernel_slots, w.build, w.destroy, w.reload_rules, self.builder.rules_fingerprint())
        result = await reconcile(self.store, self.plan, kernel, self.config.host_port_range)
        self.inventory = result.inventory    # install the snapshot
        # One stored by a version before firewall/rules_probe.py hashed a listing
        # and never matches: the first sync then reloads the table once, as
        # after an upgrade that changes rules/netagent.nft (elements refilled in
        # the same transaction, flows and DNS admissions kept: HostTable.reload).
        self.keeper.fingerprint = self.store.get_meta("ruleset_fingerprint")
        self.meter.load()
        # what the kernel counted while no agent ran, read before the resync:
        # a reload (rules changed by an upgrade, or drifted) starts every counter at 0
        await self.meter.refresh()
        await self.resync()
        if shapes := [(r.slot, r.limits) for r in self.inventory.allocations.values() if r.limits.limited]:
            await self.traffic.shape(shapes)   # a rebuilt slot lost its qdiscs
        await self.meter.close_pending()    # released before a crash: final count before cleaning
        self.pool.ready.extend(result.ready)
        if result.dirty:
            await self.pool.clean(result.dirty)
        repairs = result.report["rebuilt"] + result.report["removed"] + result.report["orphans"]
        self._reconciled["reconcile_repairs"] += repairs
        self._reconciled["last_reconcile"] = result.summary
        self.metrics.reconcile_repairs(repairs)
        self.metrics.observe_reconcile(result.summary["duration_s"])

    async def _start_dns_proxy(self) -> None:
        self.dns, self._dns_servers = await start_proxy(self.config, self.host.call, self.dns_threads.call,
                                                        self.admission.policy_of, self.admission.admit,
                                                        self._is_ruled, self._steer)

    def _make_loop_batch(self) -> LoopBatcher | None:
        """The host driver's sender of element batches from the loop, when it
        has one (firewall/loop_batch.py); made on the host thread (its netns)."""
        make = getattr(self._host_fw(), "loop_batcher", None)
        return make() if make is not None else None

    def _host_setup(self) -> HostInfo:
        apply_sysctls()
        return discover(self.builder.host_ipr(), self.config.uplink)

    async def wait_pool_ready(self, timeout: float = 60.0, at_least: int | None = None) -> None:
        want = self.config.pool.size if at_least is None else at_least
        await self.pool.wait_ready(want, lambda: self.plan.capacity - len(self.inventory.allocations), timeout)

    async def refresh_metrics(self) -> None:
        """Gauges from memory; per-sandbox bytes from one link stats dump (readers thread)."""
        by_state: dict[str, int] = {}
        for state in self.inventory.slots.values():
            by_state[state.value] = by_state.get(state.value, 0) + 1
        self.metrics.set_state(by_state, len(self.ready), len(self.allocations), self.plan.capacity)
        veths = {sid: self.plan.host_veth(rec.slot) for sid, rec in self.allocations.items()}
        ready = [self.plan.host_veth(i) for i in self.ready]
        await self.readers.call(lambda: self.metrics.refresh_link_stats(self.link_counters.read(), veths, ready))
        drops = await self.readers.call(lambda: self._readers_fw().counters())
        self.metrics.set_drop_counters({k: v for k, v in drops.items() if k.startswith("drop_")})
        self.usage_metrics.update(self.meter.open_totals(), self.meter.released_total, self.meter.read_at,
                                  self.meter.failed_readings)

    def reconfigure(self, config: Config) -> None:
        """Swap in a new config (SIGHUP). Read where it is used, so the pool
        size and the policy default apply at once; the pool refills, or
        releases shrink it."""
        self.config = config
        self.pool.wake()

    def healthy(self) -> bool:
        """For the systemd watchdog: the committer and the ruleset watcher run."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def stop(self) -> None:
        """Stop background work. The datapath stays exactly as it is."""
        committer, others = self._tasks[0], self._tasks[1:]
        self.pool.stopping = True   # a failing clean is not retried; the slot stays dirty for the next start
        for task in others:
            task.cancel()
        for server in self._dns_servers or ():
            server.close()
        await asyncio.gather(*others, return_exceptions=True)
        self.repair_io.stop()
        await self.reachability.stop()
        await self.denied.stop()
        await self.flows.stop()
        await self.first_payload.stop()
        if self.intercept is not None:
            await self.intercept.stop()
        await self.meter.refresh()   # persisted as of now: a table flushed while we are down loses nothing
        while not self.committer.idle or self.pool.busy:  # let queued work finish
            await self.pool.drain()
            await asyncio.sleep(0.01)
        committer.cancel()
        await asyncio.gather(committer, return_exceptions=True)
        self._tasks.clear()
        self.builds.shutdown()
        self.cleaner.shutdown()
        self.readers.shutdown()
        self.dns_threads.shutdown()
        self.host.shutdown()
        self.meter.close()
        if self._loop_batch is not None:
            self._loop_batch.close()
        self.store.close()

    # ---- maintenance -----------------------------------------------------

    async def resync(self) -> dict[str, Any]:
        """Reload the ruleset if it drifted and re-add every element, atomically."""
        await self._submit(ops.Resync())
        if self.config.first_payload.check:
            await self._ensure_first_payload()
        return {"ruleset_reloaded": self.keeper.last_reloaded,
                "elements": len(desired_elements(self.inventory, self.plan))}

    async def _ensure_first_payload(self) -> None:
        """The first-payload table beside the host table (gone after `nft flush ruleset`)."""
        table = ruleset.first_payload_table(self.config)
        text = ruleset.first_payload_text(self.config, self.first_payload_source)
        queue = self.config.first_payload.queue
        if await self.host.call(lambda: self._host_fw().ensure_first_payload(table, text, queue)):
            log.info("loaded the first-payload table %s", table)

    async def repair(self) -> dict[str, Any]:
        """Operator repair (Resync RPC): the host table and elements, every slot's
        kernel objects, and every registry record."""
        result = await self.resync()
        repairs = await self.self_repair.check_all()
        self.reachability.republish()
        return {**result, "slots_repaired": len(repairs.fixes), "slots_quarantined": len(repairs.quarantine)}

    async def _report_incidents(self, repairs: Repairs, done: Mapping[int, frozenset[Fix]]) -> None:
        await self._submit(ops.SlotIncidents(tuple((i, tuple(sorted(f))) for i, f in done.items()),
                                             repairs.tap_lost, repairs.quarantine))
        self.pool.forget(repairs.quarantine)
        self.metrics.slot_incidents([f for fixes in done.values() for f in fixes], len(repairs.tap_lost),
                                    len(repairs.quarantine))

    # ---- the committer's collaborators -----------------------------------------

    def _plan_context(self) -> PlanContext:
        return PlanContext(self.plan, self.config.guest, self.config.default_internet, self.reachability.port_view)

    async def _apply_burst(self, burst: Burst) -> None:
        """One nft transaction for the burst (a full sync if one was asked for)."""
        if burst.full_sync:
            dynamic = desired_elements(burst.draft, self.plan)
            self.metrics.observe_nft(await self.host.call(lambda: self.keeper.sync(self._host_fw(), dynamic)))
            self.store.set_meta("ruleset_fingerprint", self.keeper.fingerprint or "")
        elif nft := burst.nft:
            # from the loop when it can (no thread hops); else on the host thread
            took = self._loop_batch.apply(nft) if self._loop_batch is not None else None
            self.metrics.observe_nft(took if took is not None else await self.host.call(self._apply_ops, nft))

    def _apply_ops(self, nft: list[el.Op]) -> float:
        fw = self._host_fw()
        fw.apply(nft)
        return fw.last_duration_s

    # ---- helpers ---------------------------------------------------------

    def _host_fw(self) -> FirewallDriver:
        """The host worker thread's firewall driver (call on that thread)."""
        return self.host.local("firewall", self._make_firewall)

    def _cleaner_fw(self) -> FirewallDriver:
        return self.cleaner.local("firewall", self._make_firewall)

    def _readers_fw(self) -> FirewallDriver:
        return self.readers.local("firewall", self._make_firewall)

    async def _on_host_fw(self, fn: Callable[[FirewallDriver], None]) -> None:
        await self.host.call(lambda: fn(self._host_fw()))

    def _config_elements(self) -> list[el.Element]:
        assert self.host_info is not None
        return ruleset.config_elements(self.config, self.host_info.uplink, self.host_info.addresses)

    def _pool_settings(self) -> PoolSettings:
        return PoolSettings.of(self.config.pool)

    def _sandbox_of_ip(self, ip: str) -> str | None:
        try:
            return self.inventory.slot_owner.get(self.plan.index_of_sandbox_ip(ip))
        except ValueError:
            return None

    async def _discovered(self, sandbox_id: str, guest_port: int) -> int:
        return await self.expose(sandbox_id, guest_port, "tcp")

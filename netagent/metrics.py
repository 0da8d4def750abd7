"""Prometheus metrics, one private registry per `Metrics` instance.

Per-sandbox traffic comes from the host veth's netlink counters. The agent
refreshes a snapshot from a worker thread (`refresh_link_stats`); a scrape only
reads that snapshot, so it never does netlink I/O.
"""
from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

# 0.1 ms .. 10 s: warm allocates are sub-millisecond, cold builds and reconciles take seconds.
DURATION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOT_STATES = ("building", "ready", "allocated", "dirty", "destroying", "quarantined")


@dataclass
class _LinkCounter:
    """One tenant's bytes on its slot's host veth, robust to counter resets."""
    veth: str
    last_rx: int   # the host veth's raw counters at the previous refresh
    last_tx: int
    sandbox_rx: int = 0   # seen from the sandbox: its rx is the veth's tx
    sandbox_tx: int = 0


def _delta(now: int, last: int) -> int:
    return now - last if now >= last else now   # a lower value: the veth was recreated


class DropCountersCollector(Collector):
    """The host table's named drop counters (drop_spoof, drop_policy_deny, ...),
    read by the agent's refresh; a table reload restarts them from 0."""

    def __init__(self) -> None:
        self.packets: dict[str, int] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("netagent_dropped_packets", "Packets dropped by the host table, by reason.",
                                     labels=["reason"])
        for name, packets in sorted(self.packets.items()):
            family.add_metric([name.removeprefix("drop_")], packets)
        yield family


class ReachabilityCollector(Collector):
    """Prober and registry figures, read from the agent at scrape time."""

    def __init__(self, status: Any) -> None:
        self.status = status   # () -> dict with the keys below

    def collect(self) -> Iterator[Metric]:
        s = self.status()
        yield CounterMetricFamily("netagent_probes", "SYN probes sent to exposed ports.", value=s["probes"])
        yield GaugeMetricFamily("netagent_probed_ports", "Exposed TCP ports being probed.", value=s["probed_ports"])
        yield GaugeMetricFamily("netagent_reachable_ports", "Probed ports that answer.", value=s["reachable_ports"])
        yield CounterMetricFamily("netagent_reachability_changes", "Ports that started or stopped answering.",
                                  value=s["changes"])
        yield GaugeMetricFamily("netagent_registry_up", "1 if the last registry write succeeded (0 if off or down).",
                                value=int(s["registry_healthy"]))
        yield CounterMetricFamily("netagent_registry_writes", "Records written to the registry.",
                                  value=s["registry_writes"])
        yield CounterMetricFamily("netagent_registry_errors", "Failed registry attempts (outages).",
                                  value=s["registry_errors"])
        yield CounterMetricFamily("netagent_registry_refused_writes",
                                  "Writes refused because the registry held a newer record (seq).",
                                  value=s["registry_refused"])


class RepairFailuresCollector(Collector):
    """Continuous reconcile's failed passes and slot repairs, read at scrape time."""

    def __init__(self, failures: Any) -> None:
        self.failures = failures   # () -> int

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("netagent_slot_repair_failures", "Continuous reconcile passes and slot repairs "
                                  "that failed (each is retried).", value=self.failures())


class LinkStatsCollector(Collector):
    def __init__(self, per_sandbox_labels: bool):
        self.per_sandbox_labels = per_sandbox_labels
        self._lock = threading.Lock()
        self._sandboxes: dict[str, _LinkCounter] = {}
        self._idle: dict[str, tuple[int, int]] = {}   # ready slots' veth counters, baselines for the next tenant
        self._total_rx = 0   # monotonic: released sandboxes' bytes stay in the sums
        self._total_tx = 0
        self._snapshot: tuple[tuple[tuple[str, int, int], ...], int, int, float] = ((), 0, 0, 0.0)

    def update(self, counters: dict[str, tuple[int, int]], veth_by_sandbox: dict[str, str],
               ready_veths: Iterable[str] = ()) -> None:
        """counters: host veth name -> (rx_bytes, tx_bytes) as the host sees them."""
        with self._lock:
            current: dict[str, _LinkCounter] = {}
            for sandbox_id, veth in veth_by_sandbox.items():
                raw = counters.get(veth)
                if raw is None:
                    continue
                rx, tx = raw
                c = self._sandboxes.get(sandbox_id)
                if c is None or c.veth != veth:
                    # New tenant: count from the slot's last idle reading if we have one, else
                    # from now. Never from zero: the veth also carried the previous tenant's bytes.
                    c = _LinkCounter(veth, *self._idle.get(veth, raw))
                d_sbx_tx, d_sbx_rx = _delta(rx, c.last_rx), _delta(tx, c.last_tx)
                c.sandbox_tx += d_sbx_tx
                c.sandbox_rx += d_sbx_rx
                c.last_rx, c.last_tx = rx, tx
                self._total_tx += d_sbx_tx
                self._total_rx += d_sbx_rx
                current[sandbox_id] = c
            self._sandboxes = current
            self._idle = {v: counters[v] for v in ready_veths if v in counters}
            rows = tuple((sid, c.sandbox_rx, c.sandbox_tx) for sid, c in sorted(current.items()))
            self._snapshot = (rows, self._total_rx, self._total_tx, time.time())

    def collect(self) -> Iterator[Metric]:
        rows, total_rx, total_tx, refreshed_at = self._snapshot
        yield CounterMetricFamily("netagent_sandboxes_rx_bytes", "Bytes received by all sandboxes (host-wide sum).",
                                  value=total_rx)
        yield CounterMetricFamily("netagent_sandboxes_tx_bytes", "Bytes sent by all sandboxes (host-wide sum).",
                                  value=total_tx)
        yield GaugeMetricFamily("netagent_link_stats_refresh_timestamp_seconds",
                                "Unix time of the last sandbox traffic refresh (0 = never).", value=refreshed_at)
        if not self.per_sandbox_labels:
            return
        rx = CounterMetricFamily("netagent_sandbox_rx_bytes", "Bytes received by the sandbox.", labels=["sandbox_id"])
        tx = CounterMetricFamily("netagent_sandbox_tx_bytes", "Bytes sent by the sandbox.", labels=["sandbox_id"])
        for sandbox_id, sbx_rx, sbx_tx in rows:
            rx.add_metric([sandbox_id], sbx_rx)
            tx.add_metric([sandbox_id], sbx_tx)
        yield rx
        yield tx


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup that can hang for seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class Metrics:
    def __init__(self, per_sandbox_labels: bool = False):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        h: dict[str, Any] = {"buckets": DURATION_BUCKETS, "registry": r}
        self._allocate = Histogram("netagent_allocate_duration_seconds",
                                   "Time to allocate a sandbox network; path=warm took a ready slot, "
                                   "cold built one.", ["path"], **h)
        self._slot_build = Histogram("netagent_slot_build_duration_seconds",
                                     "Time to build one slot (netns, veth, tap, in-slot rules).", **h)
        self._release = Histogram("netagent_release_duration_seconds", "Time to release a sandbox network.", **h)
        self._nft = Histogram("netagent_nft_transaction_duration_seconds",
                              "Time of one host nftables transaction.", **h)
        self._reconcile = Histogram("netagent_reconcile_duration_seconds", "Time of one start-up reconcile.", **h)
        self._slots = Gauge("netagent_slots", "Slots by state.", ["state"], registry=r)
        self._ready = Gauge("netagent_pool_ready_slots", "Warm slots ready to be allocated.", registry=r)
        self._allocations = Gauge("netagent_allocations", "Sandboxes with an allocated network.", registry=r)
        self._capacity = Gauge("netagent_slot_capacity", "Maximum number of slots (transit_cidr size / 2).",
                               registry=r)
        self._errors = Counter("netagent_errors", "Failed operations by operation and error code.",
                               ["operation", "code"], registry=r)
        self._repairs = Counter("netagent_reconcile_repairs",
                                "Slots rebuilt or removed by reconcile (drift between state and kernel).",
                                registry=r)
        self._restores = Counter("netagent_ruleset_restores",
                                 "Times the host nft table was found flushed or edited and restored.", registry=r)
        self._slot_repairs = Counter("netagent_slot_repairs", "Kernel objects of slots repaired while running, "
                                     "by what was fixed.", ["fix"], registry=r)
        self._taps_lost = Counter("netagent_taps_lost", "Allocated slots found without their tap "
                                  "(not repairable: the VMM holds the old one).", registry=r)
        self._quarantined = Counter("netagent_slots_quarantined", "Slots found without their netns and "
                                    "quarantined.", registry=r)
        for path in ("warm", "cold"):
            self._allocate.labels(path=path)
        for state in SLOT_STATES:
            self._slots.labels(state=state)
        self.link_stats = LinkStatsCollector(per_sandbox_labels)
        r.register(self.link_stats)
        self.drops = DropCountersCollector()
        r.register(self.drops)
        self._http: _QuietHTTPServer | None = None

    def watch_reachability(self, status: Any) -> None:
        self.registry.register(ReachabilityCollector(status))

    def watch_repair_failures(self, failures: Any) -> None:
        self.registry.register(RepairFailuresCollector(failures))

    # ---- durations (seconds) --------------------------------------------

    def observe_allocate(self, seconds: float, warm: bool) -> None:
        self._allocate.labels(path="warm" if warm else "cold").observe(seconds)

    def observe_slot_build(self, seconds: float) -> None:
        self._slot_build.observe(seconds)

    def observe_release(self, seconds: float) -> None:
        self._release.observe(seconds)

    def observe_nft(self, seconds: float) -> None:
        self._nft.observe(seconds)

    def observe_reconcile(self, seconds: float) -> None:
        self._reconcile.observe(seconds)

    # ---- counters and gauges ---------------------------------------------

    def error(self, operation: str, code: str) -> None:
        self._errors.labels(operation=operation, code=code).inc()

    def reconcile_repairs(self, n: int) -> None:
        if n > 0:
            self._repairs.inc(n)

    def ruleset_restored(self) -> None:
        self._restores.inc()

    def slot_incidents(self, fixed: list[str], taps_lost: int, quarantined: int) -> None:
        for fix in fixed:
            self._slot_repairs.labels(fix=fix).inc()
        if taps_lost:
            self._taps_lost.inc(taps_lost)
        if quarantined:
            self._quarantined.inc(quarantined)

    def set_state(self, slots_by_state: Mapping[Any, int], ready: int, allocations: int, capacity: int) -> None:
        """slots_by_state: state -> count; keys may be SlotState members. Missing states are 0."""
        counts = {str(getattr(k, "value", k)): n for k, n in slots_by_state.items()}
        for state in (*SLOT_STATES, *(s for s in counts if s not in SLOT_STATES)):
            self._slots.labels(state=state).set(counts.get(state, 0))
        self._ready.set(ready)
        self._allocations.set(allocations)
        self._capacity.set(capacity)

    def refresh_link_stats(self, counters: dict[str, tuple[int, int]], veth_by_sandbox: dict[str, str],
                           ready_veths: Iterable[str] = ()) -> None:
        """counters: ifname -> (rx_bytes, tx_bytes) of one link dump (datapath/link_counters.py,
        on a worker thread in the host netns).

        veth_by_sandbox: allocated sandboxes -> host veth. ready_veths (optional): host veths
        of warm slots; with them a new tenant's bytes count from allocation, not from the
        first refresh after it."""
        self.link_stats.update(counters, veth_by_sandbox, ready_veths)

    # ---- exposition --------------------------------------------------------

    def set_drop_counters(self, packets: dict[str, int]) -> None:
        self.drops.packets = dict(packets)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def start_http(self, host: str, port: int) -> int:
        """Serve /metrics on a daemon thread; returns the bound port."""
        if self._http is not None:
            raise RuntimeError("metrics HTTP server already started")
        self._http = serve_http(self.registry, host, port)
        return int(self._http.server_address[1])

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def serve_http(registry: CollectorRegistry, host: str, port: int) -> ThreadingHTTPServer:
    """/metrics of `registry` on a daemon thread (the agent's, the edge's)."""
    host = (host or "0.0.0.0").strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_cls = type("MetricsHTTPServer", (_QuietHTTPServer,), {"address_family": family})
    server = server_cls((host, port), MetricsHandler.factory(registry))
    threading.Thread(target=server.serve_forever, name="netagent-metrics", daemon=True).start()
    return server

"""Every connection of every sandbox on record, from the kernel's conntrack
destroy events in the host netns (no per-packet work): one thread reads the
events, names each flow's sandbox and hands the records to the store's
writer thread. The event loop only keeps the slot owners up to date.

Restarts: the live sandbox flows are saved every `snapshot_interval_s` and at
stop; at start, a saved flow that is no longer in conntrack ended while no
agent listened and is recorded with its counters as last seen (while_down).
The periodic dump also makes the kernel reap expired entries it walks, so
their destroy events come out then rather than at its next garbage pass."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core import ops
from ..errors import FailedPrecondition
from ..workers import name_os_thread
from . import codec, reader
from .records import FlowRecord, Placement, ended_while_down, make_record, owner_at, place, refused_record
from .store import FlowStore, Retention

log = logging.getLogger("netagent.flows")
REFUSED_REPEAT_S = 30.0    # a refused flow's retransmits within this long are one record
OWNERS_KEPT = 4            # per slot: who held it (for destroy events read after a reuse)


@dataclass(frozen=True)
class FlowLinks:
    on_host: Callable[[Callable[[], Any]], Awaitable[Any]]   # run on a host-netns thread
    index_of: Callable[[str], int]                           # sandbox IP -> slot (ValueError)
    transit: ipaddress.IPv4Network
    names_for: Callable[[str, str], frozenset[str]]          # (sandbox IP, address) -> admitting names


def from_config(config: Any, plan: Any, on_host: Callable[[Callable[[], Any]], Awaitable[Any]],
                names_for: Callable[[str, str], frozenset[str]]) -> FlowRecorder:
    """The agent's recorder: flows.db in the state dir, retention and log from config.flows."""
    flows = config.flows
    store = FlowStore(config.state_dir / "flows.db", Retention(
        flows.retain_s, flows.max_records, config.flow_log_path(), flows.log_max_bytes))
    return FlowRecorder(store, FlowLinks(on_host, plan.index_of_sandbox_ip, config.transit_cidr, names_for),
                        lambda: config.flows.snapshot_interval_s)


def with_metrics(recorder: FlowRecorder, registry: Any) -> FlowRecorder:
    """Register the recorder's figures in the agent's Prometheus registry."""
    from .metrics import FlowMetrics
    registry.register(FlowMetrics(recorder))
    return recorder


class FlowRecorder:
    def __init__(self, store: FlowStore, links: FlowLinks, snapshot_interval_s: Callable[[], float]):
        self.store = store
        self.links = links
        self.snapshot_interval_s = snapshot_interval_s
        self.owners: dict[int, tuple[tuple[float, str], ...]] = {}
        self._events: socket.socket | None = None
        self._dumper: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._refused: dict[tuple[str, ...], float] = {}
        self._seq = 0
        self.enabled = False
        self.seen = 0        # destroy events of sandbox flows
        self.lost = 0        # times the kernel dropped events (ENOBUFS)

    # ---- owners (event loop) -------------------------------------------------

    def allocated(self, slot: int, since: float, sandbox_id: str) -> None:
        held = tuple(h for h in self.owners.get(slot, ()) if h[1] != sandbox_id)
        self.owners[slot] = (*held, (since, sandbox_id))[-OWNERS_KEPT:]

    def on_committed(self, done: Iterable[ops.Operation], allocations: Mapping[str, Any]) -> None:
        """After a commit: note the slots that allocated sandboxes now hold."""
        for op in done:
            if isinstance(op, ops.Allocate) and (rec := allocations.get(op.sandbox_id)) is not None:
                self.allocated(rec.slot, rec.created_at, op.sandbox_id)

    # ---- lifecycle -------------------------------------------------------------

    async def start(self, allocations: Iterable[Any] = ()) -> None:
        """Subscribe first, then dump: a flow ending in between is an event."""
        for rec in allocations:
            self.allocated(rec.slot, rec.created_at, rec.sandbox_id)
        await self.links.on_host(reader.enable_accounting)
        self._events = await self.links.on_host(reader.open_events)
        self._dumper = await self.links.on_host(reader.open_dumper)
        self.store.start()
        saved = await asyncio.to_thread(self.store.load_live)
        live = await asyncio.to_thread(self._snapshot)
        await asyncio.to_thread(self._drain)
        gone = ended_while_down(saved, {r.key for r in live}, time.time())
        self.store.add(gone)
        if gone:
            log.info("%d sandbox flows ended while the agent was down: recorded with their last counters", len(gone))
        self._thread = threading.Thread(target=self._run, name="netagent-flow-reader", daemon=True)
        self._thread.start()
        self.enabled = True

    async def stop(self) -> None:
        """A last snapshot, then the rest of the queued events."""
        if self._thread is None:
            return
        self._stopping.set()
        await asyncio.to_thread(self._thread.join, 30)
        self._thread = None
        await asyncio.to_thread(self._snapshot)
        await asyncio.to_thread(self._drain)
        for sock in (self._events, self._dumper):
            if sock is not None:
                sock.close()
        self._events = self._dumper = None
        await asyncio.to_thread(self.store.flush)
        await asyncio.to_thread(self.store.stop)

    # ---- records ------------------------------------------------------------

    async def query(self, sandbox_id: str, since: float, until: float | None, limit: int) -> list[FlowRecord]:
        """The sandbox's records that ended in [since, until]: read on a thread
        (its own SQLite connection), after what is queued for writing."""
        if not self.enabled:
            raise FailedPrecondition("flow records are off on this host (config [flows] record = false)")
        return await asyncio.to_thread(self.store.query, sandbox_id, since, until, limit)

    def refused_packet(self, sandbox_id: str, pkt: Any) -> None:
        """The denied-flow log's callback (firewall/nflog.DeniedPacket)."""
        self.refused(sandbox_id, pkt.protocol, pkt.source, pkt.source_port, pkt.destination, pkt.port, pkt.length)

    def refused(self, sandbox_id: str, protocol: str, source: str, source_port: int, destination: str,
                port: int, length: int) -> None:
        """A packet the policy dropped (denied-flow log): one record per flow."""
        now = time.time()
        flow = (sandbox_id, protocol, source, str(source_port), destination, str(port))
        if now - self._refused.get(flow, 0.0) < REFUSED_REPEAT_S:
            return
        if len(self._refused) > 65536:
            self._refused = {k: t for k, t in self._refused.items() if now - t < REFUSED_REPEAT_S}
        self._refused[flow] = now
        domain = ",".join(sorted(self.links.names_for(source, destination)))
        self.store.add([refused_record(sandbox_id, protocol, source, source_port, destination, port, length,
                                       domain, now)])

    def record(self, entry: codec.CtEntry, destroyed: bool = True, now: float | None = None) -> FlowRecord | None:
        where = place(entry, self.links.index_of, self.links.transit)
        if where is None:
            return None
        started = entry.start_ns / 1e9 if entry.start_ns else time.time()
        sandbox_id = owner_at(self.owners, where.slot, started)
        if sandbox_id is None:
            return None
        return make_record(entry, where, sandbox_id, self._domain(where, entry), now, destroyed)

    def _domain(self, where: Placement, entry: codec.CtEntry) -> str:
        if where.direction != "egress":
            return ""
        return ",".join(sorted(self.links.names_for(where.sandbox_ip, entry.orig.dst)))

    # ---- the reader thread -----------------------------------------------------

    def _run(self) -> None:
        name_os_thread("netagent-flowrd")
        next_snapshot = time.monotonic() + self.snapshot_interval_s()
        while not self._stopping.is_set():
            try:
                self._read_once()
                if time.monotonic() >= next_snapshot:
                    next_snapshot = time.monotonic() + self.snapshot_interval_s()
                    self._snapshot()
            except Exception:
                log.exception("flow reader: carrying on")
                time.sleep(0.5)

    def _read_once(self) -> int:
        assert self._events is not None
        try:
            entries = reader.read_events(self._events)
        except OSError as exc:
            if exc.errno != 105:   # ENOBUFS: the kernel dropped events; the socket carries on
                raise
            self.lost += 1
            log.warning("flow reader: the kernel dropped conntrack events (buffer full); some flows have no record")
            return 0
        records = [r for e in entries if (r := self.record(e)) is not None]
        self.seen += len(records)
        self.store.add(records)
        return len(entries)

    def _drain(self) -> None:
        """Read what is queued now (start and stop)."""
        assert self._events is not None
        self._events.setblocking(False)
        try:
            while True:
                try:
                    self._read_once()
                except BlockingIOError:
                    return
        finally:
            self._events.settimeout(0.5)

    def _snapshot(self) -> list[FlowRecord]:
        """Dump the live entries; save the sandbox flows among them."""
        assert self._dumper is not None
        self._seq += 10
        now = time.time()
        live = [r for e in reader.dump(self._dumper, self._seq) if (r := self.record(e, False, now)) is not None]
        self.store.save_live(live)
        return live

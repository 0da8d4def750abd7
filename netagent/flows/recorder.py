"""Every connection of every sandbox on record, from the kernel's conntrack
events in the host netns (no per-packet work): one thread reads them, names
each flow's sandbox and hands the records to the store's writer thread. The
event loop only keeps the slot owners up to date.

Restarts: a new event puts the flow in the store's live set, its destroy
event takes it out (with its record). At start, a flow of the saved live set
that is no longer in conntrack ended while no agent listened: it is recorded
with its counters as last seen (while_down, a lower bound): read every
`counters_interval_s` and at a graceful stop. Every `reap_interval_s` a dump,
read and dropped, makes the kernel delete the expired entries it walks, so
their destroy events come then rather than at its next garbage-collection
pass (a counters reading is such a dump too)."""
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
STOP_BUDGET_S = 5.0        # at stop, parse live entries' counters for at most this long
READING_BUDGET_S = 1.0     # a periodic counters reading parses for at most this long


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
                        lambda: config.flows.reap_interval_s, lambda: config.flows.counters_interval_s)


def with_metrics(recorder: FlowRecorder, registry: Any) -> FlowRecorder:
    """Register the recorder's figures in the agent's Prometheus registry."""
    from .metrics import FlowMetrics
    registry.register(FlowMetrics(recorder))
    return recorder


class FlowRecorder:
    def __init__(self, store: FlowStore, links: FlowLinks, reap_interval_s: Callable[[], float],
                 counters_interval_s: Callable[[], float] = lambda: 0.0):
        self.store = store
        self.links = links
        self.reap_interval_s = reap_interval_s
        self.counters_interval_s = counters_interval_s
        self.readings = 0    # periodic readings of the live flows' counters
        self.reading_cpu_s = 0.0     # the reader thread's CPU time in them
        self.reading_entries = 0     # conntrack entries the last one parsed
        self._cursor = 0             # where a reading cut by its budget stopped (in dump order)
        self._budget_noted = False   # the budget's warning: once
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
        live, alive = await asyncio.to_thread(self._live_now)
        self.store.save_live(live)
        closed = await asyncio.to_thread(self._drain)
        gone = ended_while_down(saved, alive | closed, time.time())
        self.store.add(gone)
        if gone:
            log.info("%d sandbox flows ended while the agent was down: recorded with their last counters", len(gone))
        self._thread = threading.Thread(target=self._run, name="netagent-flow-reader", daemon=True)
        self._thread.start()
        self.enabled = True

    async def stop(self, budget_s: float = STOP_BUDGET_S) -> None:
        """The queued events, then the live flows' counters as of now (parsing
        for at most `budget_s`: a table of 100,000 entries would take seconds)."""
        if self._thread is None:
            return
        self._stopping.set()
        await asyncio.to_thread(self._thread.join, 30)
        self._thread = None
        await asyncio.to_thread(self._drain)
        self.store.refresh_live((await asyncio.to_thread(self._live_now, budget_s))[0])
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
        next_reap = time.monotonic() + self.reap_interval_s()
        next_reading = time.monotonic() + (self.counters_interval_s() or float("inf"))
        while not self._stopping.is_set():
            try:
                self._read_once()
                now = time.monotonic()
                if now >= next_reading:
                    # events came in order before this dump and come after it: a flow it
                    # saw end is closed after this refresh, on the same writer queue
                    next_reading = now + (self.counters_interval_s() or float("inf"))
                    next_reap = now + self.reap_interval_s()     # the dump reaped too
                    cpu = time.thread_time()
                    live, alive = self._live_now(READING_BUDGET_S)
                    self.store.refresh_live(live)
                    self.readings += 1
                    self.reading_entries = len(alive)
                    self.reading_cpu_s += time.thread_time() - cpu
                elif now >= next_reap:
                    next_reap = now + self.reap_interval_s()
                    assert self._dumper is not None
                    self._seq += 10
                    reader.reap(self._dumper, self._seq)
            except Exception:
                log.exception("flow reader: carrying on")
                time.sleep(0.5)

    def _read_once(self) -> set[str]:
        """Read one datagram of events; the entry ids of the flows that ended."""
        assert self._events is not None
        try:
            events = reader.read_events(self._events)
        except OSError as exc:
            if exc.errno != 105:   # ENOBUFS: the kernel dropped events; the socket carries on
                raise
            self.lost += 1
            log.warning("flow reader: the kernel dropped conntrack events (buffer full); some flows have no record")
            return set()
        records, closed = [], set()
        for destroyed, entry in events:
            if (rec := self.record(entry, destroyed)) is None:
                continue
            if destroyed:
                records.append(rec)
                closed.add(entry.entry_id)
                self.store.closed(entry.entry_id)
            else:
                self.store.opened(rec)
        self.seen += len(records)
        self.store.add(records)
        return closed

    def _drain(self) -> set[str]:
        """Read what is queued now (start and stop); the entry ids that ended."""
        assert self._events is not None
        closed: set[str] = set()
        self._events.setblocking(False)
        try:
            while True:
                try:
                    closed |= self._read_once()
                except BlockingIOError:
                    return closed
        finally:
            self._events.settimeout(0.5)

    def _live_now(self, budget_s: float | None = None) -> tuple[list[FlowRecord], set[str]]:
        """The sandbox flows in conntrack now, as records keyed by entry id, and
        the entry id of every entry read (a saved flow whose slot has no owner
        now, released while no agent ran, is still alive). With a budget, the
        parse starts where the last one that ran out stopped, so a table too
        big for one reading is covered over several."""
        assert self._dumper is not None
        self._seq += 10
        now = time.time()
        live: list[FlowRecord] = []
        alive: set[str] = set()
        bodies = reader.dump(self._dumper, self._seq)
        # the budget is the parse's: the dump (the kernel's walk, the reads) is not cut
        deadline = time.monotonic() + budget_s if budget_s is not None else None
        first = self._cursor % len(bodies) if bodies and deadline is not None else 0
        for n in range(len(bodies)):
            if deadline is not None and time.monotonic() > deadline:
                self._cursor = first + n
                if not self._budget_noted:
                    self._budget_noted = True
                    log.warning("flow reader: %d of %d live entries read (budget); the next reading goes on "
                                "from there", n, len(bodies))
                break
            if (entry := codec.parse_entry(bodies[(first + n) % len(bodies)])) is None:
                continue
            alive.add(entry.entry_id)
            if (rec := self.record(entry, False, now)) is not None:
                live.append(rec)
        return live, alive

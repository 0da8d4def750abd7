"""The prober: keeps every exposed TCP port on a schedule and reports changes.

One asyncio task walks a heap of due times and fires SYN probes (no task per
probe: a callback handles each result). `on_change` gets each port whose
reachability changed; the agent stores it and publishes it.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable

from ..workers import cancel_task, wait_event
from .schedule import PortProbe, ProbeKey, ProbeSchedule
from .tcp_syn import ProbeResult, SynProber

log = logging.getLogger("netagent.prober")


class Prober:
    def __init__(self, syn: SynProber, schedule: ProbeSchedule,
                 on_change: Callable[[PortProbe], None], max_inflight: int = 4096):
        self.syn = syn
        self.schedule = schedule
        self.on_change = on_change
        self.max_inflight = max_inflight
        self.ports: dict[ProbeKey, PortProbe] = {}
        self._heap: list[tuple[float, int, ProbeKey]] = []
        self._wake = asyncio.Event()
        self._inflight = 0
        self._task: asyncio.Task[None] | None = None
        self._generation = 0   # one counter for all ports: a stale heap entry never matches
        self.probes = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="netagent-prober")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self.syn.close()

    def add(self, port: PortProbe) -> None:
        """Start probing (or re-probe at once, fast, if already known)."""
        old = self.ports.get(port.key)
        if old is not None:
            port = old
        self._generation += 1
        port.generation = self._generation
        port.fast_until = time.monotonic() + self.schedule.fast_period_s
        self.ports[port.key] = port
        self._push(time.monotonic(), port)

    def remove(self, key: ProbeKey) -> None:
        self.ports.pop(key, None)   # its heap entries are skipped

    def remove_sandbox(self, sandbox_id: str) -> None:
        for key in [k for k in self.ports if k[0] == sandbox_id]:
            del self.ports[key]

    def get(self, key: ProbeKey) -> PortProbe | None:
        return self.ports.get(key)

    async def probe_now(self, src_ip: str, dst_ip: str, port: int, timeout: float | None = None) -> ProbeResult:
        return await self.syn.start(src_ip, dst_ip, port, timeout or self.schedule.timeout_s)

    def _push(self, due: float, port: PortProbe) -> None:
        heapq.heappush(self._heap, (due, port.generation, port.key))
        if self._heap[0][2] == port.key:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now and self._inflight < self.max_inflight:
                _, gen, key = heapq.heappop(self._heap)
                port = self.ports.get(key)
                if port is None or port.generation != gen:
                    continue
                self._fire(port)
            delay = (self._heap[0][0] - now) if self._heap else 3600.0
            if self._inflight >= self.max_inflight:
                delay = 0.005
            self._wake.clear()
            await wait_event(self._wake, max(delay, 0.0005))

    def _fire(self, port: PortProbe) -> None:
        self._inflight += 1
        self.probes += 1
        gen = port.generation
        fut = self.syn.start(port.src_ip, port.dst_ip, port.guest_port, self.schedule.timeout_s)
        fut.add_done_callback(lambda f: self._done(port, gen, f.result()))

    def _done(self, port: PortProbe, gen: int, result: ProbeResult) -> None:
        self._inflight -= 1
        if self.ports.get(port.key) is not port or port.generation != gen:
            return  # removed or re-added while in flight
        now = time.monotonic()
        if self.schedule.apply(port, result, time.time(), now):
            try:
                self.on_change(port)
            except Exception:  # a bad callback must not stop probing
                log.exception("reachability callback failed")
        self._push(now + self.schedule.next_delay(port, now), port)

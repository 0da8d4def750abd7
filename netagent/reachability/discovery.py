"""Discovery mode: scan a port range of every sandbox at a bounded rate and
expose each TCP listener found (SYN probes, so the guest sees nothing).

Cost: one SYN (and a SYN-ACK or RST back) per port per sandbox per pass. A
full pass takes ports * sandboxes / rate seconds; see docs/reachability.md.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

from ..addressing import SlotAddresses
from ..core.allocation import Allocation
from ..errors import NetagentError
from ..models import Protocol
from ..workers import cancel_task
from .prober import Prober
from .tcp_syn import ProbeResult

log = logging.getLogger("netagent.discovery")
TICK_S = 0.01


class Discovery:
    def __init__(self, allocations: Callable[[], Mapping[str, Allocation]], slot: Callable[[int], SlotAddresses],
                 expose: Callable[[str, int], Awaitable[int]], spawn: Callable[[Coroutine[Any, Any, None]], None],
                 prober: Prober, port_range: tuple[int, int], rate: int):
        self.allocations = allocations
        self.slot = slot
        self.expose = expose
        self.spawn = spawn
        self.prober = prober
        self.ports = range(port_range[0], port_range[1] + 1)
        self.rate = rate
        self.passes = 0
        self.found = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="netagent-discovery")

    async def stop(self) -> None:
        await cancel_task(self._task)

    async def _run(self) -> None:
        per_tick = max(1, round(self.rate * TICK_S))
        sent = 0
        while True:
            if not self.allocations():
                await asyncio.sleep(1.0)
                continue
            for rec in list(self.allocations().values()):
                slot = self.slot(rec.slot)
                for port in self.ports:
                    now = self.allocations().get(rec.sandbox_id)
                    if now is None or now.slot != rec.slot or now.created_at != rec.created_at:
                        break  # released (and maybe allocated again) meanwhile
                    if (port, Protocol.TCP) in now.ports:
                        continue
                    fut = self.prober.syn.start(str(slot.host_ip), str(slot.sandbox_ip), port,
                                                self.prober.schedule.timeout_s)
                    fut.add_done_callback(lambda f, sid=rec.sandbox_id, p=port: self._answered(sid, p, f.result()))
                    sent += 1
                    if sent >= per_tick:
                        sent = 0
                        await asyncio.sleep(TICK_S)
            self.passes += 1
            await asyncio.sleep(TICK_S)

    def _answered(self, sandbox_id: str, port: int, result: ProbeResult) -> None:
        if result.reachable:
            self.spawn(self._expose(sandbox_id, port))

    async def _expose(self, sandbox_id: str, port: int) -> None:
        try:
            host_port = await self.expose(sandbox_id, port)
            self.found += 1
            log.info("discovered a listener on %s port %d: exposed on host port %d", sandbox_id, port, host_port)
        except NetagentError as exc:
            log.info("discovered %s port %d but could not expose it: %s", sandbox_id, port, exc)

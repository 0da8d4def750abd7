"""Discovery mode: scan a port range of every sandbox at a bounded rate and
expose each TCP listener found (SYN probes, so the guest sees nothing).

Cost: one SYN (and a SYN-ACK or RST back) per port per sandbox per pass. A
full pass takes ports * sandboxes / rate seconds; see docs/reachability.md.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import NetagentError
from ..models import Protocol
from ..workers import cancel_task
from .prober import Prober
from .tcp_syn import ProbeResult

if TYPE_CHECKING:
    from ..agent import Agent

log = logging.getLogger("netagent.discovery")
TICK_S = 0.01


class Discovery:
    def __init__(self, agent: Agent, prober: Prober, port_range: tuple[int, int], rate: int):
        self.agent = agent
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
            if not self.agent.allocations:
                await asyncio.sleep(1.0)
                continue
            for rec in list(self.agent.allocations.values()):
                slot = self.agent.plan.slot(rec.slot)
                for port in self.ports:
                    if self.agent.allocations.get(rec.sandbox_id) is not rec:
                        break
                    if (port, Protocol.TCP) in rec.ports:
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
            self.agent._spawn(self._expose(sandbox_id, port))

    async def _expose(self, sandbox_id: str, port: int) -> None:
        try:
            host_port = await self.agent.expose(sandbox_id, port, "tcp")
            self.found += 1
            log.info("discovered a listener on %s port %d: exposed on host port %d", sandbox_id, port, host_port)
        except NetagentError as exc:
            log.info("discovered %s port %d but could not expose it: %s", sandbox_id, port, exc)

"""Denied flows as events: reads the nflog group of the host table's deny_*
chains (rate-limited per sandbox in the kernel), names the sandbox, logs one
line per packet and stores FLOW_DENIED events in batches."""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from .firewall import nflog
from .logs import for_sandbox

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("netagent.denied")
BATCH_S = 0.1


class DeniedFlowLog:
    def __init__(self, agent: Agent):
        self.agent = agent
        self.sock: socket.socket | None = None
        self._by_ip: dict[str, str] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self.seen = 0

    async def start(self) -> None:
        self.sock = await self.agent.host.call(nflog.open_socket)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_readable)

    async def stop(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _sandbox_of(self, ip: str) -> str | None:
        sid = self._by_ip.get(ip)
        if sid is None or self.agent.allocations.get(sid) is None:
            self._by_ip = {str(self.agent.plan.slot(rec.slot).sandbox_ip): s
                           for s, rec in self.agent.allocations.items()}
            sid = self._by_ip.get(ip)
        return sid

    def _on_readable(self) -> None:
        assert self.sock is not None
        for _ in range(64):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:   # ENOBUFS: the kernel dropped some; go on
                log.warning("denied-flow log: %s", exc)
                break
            for pkt in nflog.parse_messages(data):
                self._record(pkt)
        if self._pending and self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    def _record(self, pkt: nflog.DeniedPacket) -> None:
        sid = self._sandbox_of(pkt.source)
        if sid is None:
            return
        self.seen += 1
        data = {"reason": pkt.reason, "destination": pkt.destination, "protocol": pkt.protocol, "port": pkt.port}
        for_sandbox(log, sid, **data).info("denied %s %s:%d (%s)", pkt.protocol, pkt.destination, pkt.port,
                                           pkt.reason)
        self._pending.append((sid, data))

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(BATCH_S)
            batch, self._pending = self._pending, []
            await self.agent.record_denied(batch)
        except Exception:
            log.exception("could not store denied-flow events")
        finally:
            self._flush_task = None

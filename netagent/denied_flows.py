"""Denied flows as events: reads the nflog group of the host table's deny_*
chains (rate-limited per sandbox in the kernel), names the sandbox, logs one
line per packet and stores FLOW_DENIED events in batches."""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from .core.ops import DeniedFlow
from .firewall import nflog
from .logs import for_sandbox

log = logging.getLogger("netagent.denied")
BATCH_S = 0.1


class DeniedFlowLog:
    def __init__(self, open_socket: Callable[[], Awaitable[socket.socket]],
                 sandbox_of: Callable[[str], str | None], record: Callable[[list[DeniedFlow]], Awaitable[None]],
                 on_packet: Callable[[str, nflog.DeniedPacket], None] | None = None):
        self.open_socket = open_socket   # the nflog socket, made in the host netns
        self.sandbox_of = sandbox_of     # sandbox IP -> sandbox id (None: not allocated)
        self.record = record             # store FLOW_DENIED events (through the committer)
        self.on_packet = on_packet       # (sandbox id, packet): the flow record of a refused flow
        self.sock: socket.socket | None = None
        self._pending: list[DeniedFlow] = []
        self._flush_task: asyncio.Task[None] | None = None
        self.seen = 0

    async def start(self) -> None:
        self.sock = await self.open_socket()
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_readable)

    async def stop(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

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
                self._note(pkt)
        if self._pending and self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    def _note(self, pkt: nflog.DeniedPacket) -> None:
        sid = self.sandbox_of(pkt.source)
        if sid is None:
            return
        self.seen += 1
        if self.on_packet is not None:
            self.on_packet(sid, pkt)
        for_sandbox(log, sid, reason=pkt.reason, destination=pkt.destination, protocol=pkt.protocol,
                    port=pkt.port).info("denied %s %s:%d (%s)", pkt.protocol, pkt.destination, pkt.port, pkt.reason)
        self._pending.append(DeniedFlow(sid, pkt.reason, pkt.destination, pkt.protocol, pkt.port))

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(BATCH_S)
            batch, self._pending = self._pending, []
            await self.record(batch)
        except Exception:
            log.exception("could not store denied-flow events")
        finally:
            self._flush_task = None

"""The first-payload check's queue reader: judges each queued packet with the
pure gatherer and verdict, answers the kernel with a packet mark
(rules/firstpayload.nft), and counts verdicts per destination. Refusals are
logged by the kernel (nflog group, reasons `sni`/`host`), so they reach the
denied-flow log like every other drop."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from ..core.ops import DestinationVerdicts
from ..firewall import nfqueue
from ..policy import CompiledPolicy
from .gather import Gatherer, Step
from .verdict import REASON_HOST, REASON_SNI, decide

log = logging.getLogger("netagent.firstpayload")

# Packet marks the verdict chain of rules/firstpayload.nft acts on.
MARK_PASS, MARK_ALLOW, MARK_DENY_SNI, MARK_DENY_HOST = 0x00010000, 0x00020000, 0x00030000, 0x00040000
TCP_RST = 0x04
COUNTED_MAX = 65536
DENY_MARK = {REASON_SNI: MARK_DENY_SNI, REASON_HOST: MARK_DENY_HOST}


@dataclass(frozen=True)
class CheckLinks:
    open_socket: Callable[[], Awaitable[socket.socket]]     # the bound queue, made in the host netns
    policy_of: Callable[[str], CompiledPolicy | None]      # sandbox IP -> its policy
    names_for: Callable[[str, str], frozenset[str]]        # (sandbox IP, address) -> names that admitted it
    sandbox_of: Callable[[str], str | None]                # sandbox IP -> sandbox id


class FirstPayloadCheck:
    def __init__(self, queue: int, links: CheckLinks, clock: Callable[[], float] = time.monotonic):
        self.queue = queue
        self.links = links
        self.clock = clock
        self.gatherer = Gatherer()
        self.sock: socket.socket | None = None
        # (sandbox id, destination, reason, "allowed"/"denied") -> flows judged
        self.verdicts: Counter[tuple[str, str, str, str]] = Counter()
        self._since_last: Counter[tuple[str, str, str, str]] = Counter()   # the same, since take_interval
        # (flow, first sequence number) of recent verdicts: a ClientHello resent
        # before its flow was labelled is judged again but counted once
        self._counted: OrderedDict[tuple[tuple[str, int, str, int], int], None] = OrderedDict()
        self.packets = 0   # queued packets judged (only the first payloads of checked flows come here)

    async def start(self) -> None:
        self.sock = await self.links.open_socket()
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
                data = self.sock.recv(1 << 17)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:   # ENOBUFS: the kernel dropped packets; TCP resends them
                log.warning("first-payload queue: %s", exc)
                return
            # all verdicts of one read in one send: the kernel takes every message of a buffer
            verdicts = [nfqueue.verdict_message(self.queue, p.packet_id, *self.judge(p))
                        for p in nfqueue.parse_messages(data)]
            if verdicts:
                self.sock.send(b"".join(verdicts))

    def judge(self, p: nfqueue.QueuedPacket) -> tuple[int, int | None]:
        """The kernel verdict and packet mark for one queued packet."""
        self.packets += 1
        if not p.source:
            return nfqueue.NF_DROP, None
        key = (p.source, p.source_port, p.destination, p.destination_port)
        now = self.clock()
        if p.flags & TCP_RST:
            self.gatherer.forget(key)
            return nfqueue.NF_ACCEPT, MARK_PASS
        out = self.gatherer.feed(key, p.seq, p.payload, now)
        if out.step is Step.PASS:
            return nfqueue.NF_ACCEPT, MARK_PASS
        if out.step is Step.DROP:
            return nfqueue.NF_DROP, None
        reason = REASON_SNI if p.destination_port == 443 else REASON_HOST
        if out.step is Step.FULL:
            self._count(p, reason, False)
            return nfqueue.NF_ACCEPT, DENY_MARK[reason]
        assert out.result is not None
        policy = self.links.policy_of(p.source)
        domains = policy.domains if policy else ()
        v = decide(out.result, domains, self.links.names_for(p.source, p.destination))
        assert v is not None
        base = self.gatherer.base_of(key)
        self.gatherer.forget(key)
        if (key, base) not in self._counted:
            self._counted[(key, base)] = None
            if len(self._counted) > COUNTED_MAX:
                self._counted.popitem(last=False)
            self._count(p, v.reason, v.allowed)
        if v.allowed:
            return nfqueue.NF_ACCEPT, MARK_ALLOW
        log.info("refused %s:%d from %s (%s: %s, name %s)", p.destination, p.destination_port, p.source,
                 v.reason, v.why, v.name)
        return nfqueue.NF_ACCEPT, DENY_MARK[v.reason]    # the verdict chain resets and logs it

    def _count(self, p: nfqueue.QueuedPacket, reason: str, allowed: bool) -> None:
        sid = self.links.sandbox_of(p.source) or p.source
        key = (sid, p.destination, reason, "allowed" if allowed else "denied")
        self.verdicts[key] += 1
        self._since_last[key] += 1

    async def publish(self, interval: Callable[[], float], allocated: Callable[[], Collection[str]],
                      record: Callable[[tuple[DestinationVerdicts, ...]], Awaitable[object]]) -> None:
        """Each interval's verdicts go to `record` (FIRST_PAYLOAD_VERDICTS events);
        released sandboxes' counts are dropped."""
        while True:
            await asyncio.sleep(interval())
            for sid in {k[0] for k in self.verdicts} - set(allocated()):
                self.forget(sid)
            counts = self.take_interval()
            if counts:
                try:
                    await record(counts)
                except Exception:
                    log.exception("could not store first-payload verdict events")

    def take_interval(self) -> tuple[DestinationVerdicts, ...]:
        """Verdicts per sandbox and destination since the last call (for events)."""
        merged: dict[tuple[str, str, str], list[int]] = {}
        for (sid, dst, reason, verdict), n in self._since_last.items():
            merged.setdefault((sid, dst, reason), [0, 0])[verdict == "denied"] += n
        self._since_last.clear()
        return tuple(DestinationVerdicts(sid, dst, reason, a, d) for (sid, dst, reason), (a, d) in merged.items())

    def forget(self, sandbox_id: str) -> None:
        """A released sandbox: its counts go (they are per tenant)."""
        for key in [k for k in self.verdicts if k[0] == sandbox_id]:
            del self.verdicts[key]

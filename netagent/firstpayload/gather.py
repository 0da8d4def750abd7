"""A flow's first payload, segment by segment, until it can be judged. Pure.

Segments that only extend a valid prefix are passed on (a server acts on
neither part of a ClientHello nor a request head without its end); the
segment that completes the message is held for the verdict. A segment that
overlaps what was gathered, or leaves a gap, is dropped while the flow is
undecided: otherwise a "retransmission" with other bytes could reach the
server unchecked. Decided flows are not remembered here: the verdict lives
on the conntrack entry (labels 101 allowed, 102 refused; rules/firstpayload.nft),
so a later flow reusing the same addresses and ports is judged afresh. A
packet queued behind the deciding one finds no flow and a gap: it is dropped,
and its retransmission meets the label in the kernel.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from .parse import MAX_FIRST_PAYLOAD, NeedMore, Result, parse

FlowKey = tuple[str, int, str, int]      # source, source port, destination, destination port
MAX_FLOWS = 16384                         # undecided flows held at once (bounds memory: ≤ 1 GiB worst case)
UNDECIDED_TTL_S = 30.0


class Step(Enum):
    PASS = "pass"          # no payload, or a prefix: let it through, flow stays unchecked
    DROP = "drop"          # overlap/gap while undecided: drop silently, TCP resends
    JUDGE = "judge"        # the message is whole (or hopeless): judge `result`
    FULL = "full"          # too many undecided flows: refuse


@dataclass
class _Flow:
    base: int
    data: bytearray = field(default_factory=bytearray)
    seen: float = 0.0


@dataclass(frozen=True)
class Outcome:
    step: Step
    result: Result | None = None


class Gatherer:
    def __init__(self, max_flows: int = MAX_FLOWS):
        self.max_flows = max_flows
        self._open: OrderedDict[FlowKey, _Flow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def feed(self, key: FlowKey, seq: int, payload: bytes, now: float) -> Outcome:
        self._expire(now)
        if not payload:
            return Outcome(Step.PASS)
        flow = self._open.get(key)
        if flow is None:
            if len(self._open) >= self.max_flows:
                return Outcome(Step.FULL)
            flow = self._open[key] = _Flow(base=seq)
        flow.seen = now
        self._open.move_to_end(key)
        if (seq - flow.base) & 0xFFFFFFFF != len(flow.data):
            return Outcome(Step.DROP)
        flow.data += payload[:MAX_FIRST_PAYLOAD + 1 - len(flow.data)]
        result = parse(bytes(flow.data))
        if isinstance(result, NeedMore):
            return Outcome(Step.PASS)
        return Outcome(Step.JUDGE, result)

    def base_of(self, key: FlowKey) -> int | None:
        """The first sequence number of an undecided flow's payload."""
        flow = self._open.get(key)
        return flow.base if flow else None

    def forget(self, key: FlowKey) -> None:
        """Judged, or ended by the guest (RST): the next flow on these ports starts afresh."""
        self._open.pop(key, None)

    def _expire(self, now: float) -> None:
        while self._open:
            key, flow = next(iter(self._open.items()))
            if flow.seen + UNDECIDED_TTL_S > now:
                break
            del self._open[key]

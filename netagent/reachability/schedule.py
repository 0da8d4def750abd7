"""When to probe a port next, and what a probe result changes (pure).

A port is probed every `interval_s` (with jitter) when stable, and every
`fast_interval_s` for `fast_period_s` after it is exposed or changes state.
It becomes reachable on the first answered SYN, and unreachable after
`down_after` failed probes in a row (the first failure is re-checked at the
fast interval, so one lost packet does not flap the registry).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .tcp_syn import ProbeResult

ProbeKey = tuple[str, int]   # (sandbox id, guest port); only TCP ports are probed


@dataclass(frozen=True)
class ProbeSchedule:
    interval_s: float = 0.7
    fast_interval_s: float = 0.1
    fast_period_s: float = 5.0
    timeout_s: float = 0.5
    down_after: int = 2
    jitter: float = 0.2          # +/- this fraction of the interval

    def next_delay(self, port: PortProbe, now: float, rng: random.Random | None = None) -> float:
        fast = now < port.fast_until or (port.reachable and port.failures > 0)
        base = self.fast_interval_s if fast else self.interval_s
        return base * (1 + self.jitter * (2 * (rng or random).random() - 1))

    def apply(self, port: PortProbe, result: ProbeResult, wall: float, now: float) -> bool:
        """Update `port` with a probe result; True if its reachability changed."""
        port.checked_at = wall
        port.last = result
        if result.reachable:
            port.failures = 0
            if port.reachable is True:
                return False
        else:
            port.failures += 1
            if port.reachable is False or (port.reachable and port.failures < self.down_after):
                return False
        port.reachable = result.reachable
        port.changed_at = wall
        port.fast_until = now + self.fast_period_s
        return True


@dataclass
class PortProbe:
    sandbox_id: str
    guest_port: int
    src_ip: str                  # the slot's host veth address (we probe from the host netns)
    dst_ip: str                  # the sandbox IP; the slot DNATs it to the guest
    reachable: bool | None = None
    changed_at: float = 0.0
    checked_at: float = 0.0
    failures: int = 0
    fast_until: float = 0.0
    last: ProbeResult | None = None
    generation: int = field(default=0)

    @property
    def key(self) -> ProbeKey:
        return (self.sandbox_id, self.guest_port)

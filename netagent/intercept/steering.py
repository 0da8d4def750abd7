"""Which answered addresses of a ruled name go to the interceptor. Pure.

A rule never opens what the connection policy refuses: an address is steered
only where the kernel would have let the flow through (the steering DNAT
happens before the forward chain, so this check stands in for it)."""
from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence

from ..policy import CompiledPolicy, NetPort


def _covers(entries: Sequence[NetPort], addr: ipaddress.IPv4Address, port: int) -> bool:
    return any(addr in e.net and (e.port is None or e.port == port) for e in entries)


def policy_permits(policy: CompiledPolicy, admitted_by_name: bool, address: str, port: int,
                   always_deny: Sequence[ipaddress.IPv4Network],
                   always_allow: Sequence[ipaddress.IPv4Network] = ()) -> bool:
    """True: the sandbox's policy lets a TCP flow to address:port through.
    admitted_by_name: the name is on its domain allowlist (DNS admission)."""
    addr = ipaddress.IPv4Address(address)
    if any(addr in n for n in always_deny) and not any(addr in n for n in always_allow):
        return False
    if admitted_by_name or _covers(policy.allow, addr, port):
        return True
    if _covers(policy.deny, addr, port):
        return False
    return policy.internet


def steer_keys(sandbox_ip: str, answers: Sequence[tuple[str, int]], ports: Sequence[int], permits) -> list:  # type: ignore[no-untyped-def]
    """intercept_dst elements ((sandbox IP, address, port), ttl) for the permitted answers."""
    return [((sandbox_ip, a, p), ttl) for a, ttl in answers for p in ports if permits(a, p)]


class Steered:
    """Which names each intercept_dst element was added for (until its TTL), so
    a rule change can hand back at once the addresses no rule needs any more."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._names: dict[tuple[str, str, int], dict[str, float]] = {}

    def note(self, name: str, keys: Sequence[tuple[tuple[str, str, int], int]]) -> None:
        now = self.clock()
        for key, ttl in keys:
            names = self._names.setdefault(key, {})
            names[name] = max(names.get(name, 0.0), now + ttl)

    def unsteer(self, sandbox_ip: str, still_ruled: Callable[[str, int], bool]) -> list[tuple[str, str, int]]:
        """The sandbox's elements whose unexpired names are no longer ruled (forgotten here)."""
        now = self.clock()
        gone = []
        for key in [k for k in self._names if k[0] == sandbox_ip]:
            live = {n: t for n, t in self._names[key].items() if t > now and still_ruled(n, key[2])}
            if live:
                self._names[key] = live
            else:
                del self._names[key]
                gone.append(key)
        return gone

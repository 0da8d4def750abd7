"""Which answered addresses of a ruled name go to the interceptor. Pure.

A rule never opens what the connection policy refuses: an address is steered
only where the kernel would have let the flow through (the steering DNAT
happens before the forward chain, so this check stands in for it)."""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence

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

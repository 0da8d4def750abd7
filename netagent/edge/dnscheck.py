"""Does a custom domain point at this edge? One A/AAAA lookup against the configured
resolver, before any ACME order (an order for a name that does not reach the edge can
only fail, and counts against the CA's limits)."""
from __future__ import annotations

import ipaddress

import dns.asyncresolver
import dns.exception
import dns.resolver


async def resolve(name: str, resolver: str, timeout_s: float = 3.0) -> set[str]:
    """The name's addresses (A and AAAA) from `resolver` (IP:PORT, or "" for the system's)."""
    r = dns.asyncresolver.Resolver(configure=not resolver)
    if resolver:
        ip, _, port = resolver.rpartition(":")
        r.nameservers = [ip.strip("[]")]
        r.port = int(port)
    r.lifetime = timeout_s
    found: set[str] = set()
    for rdtype in ("A", "AAAA"):
        try:
            answer = await r.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            continue
        found.update(str(ipaddress.ip_address(item.to_text())) for item in answer)
    return found


async def points_here(name: str, resolver: str, edge_addresses: frozenset[str]) -> tuple[bool, str]:
    """(True, "") when every address of the name is one of the edge's; else why not.
    Every address must be the edge's: a CA may validate from any of them."""
    try:
        found = await resolve(name, resolver)
    except dns.exception.DNSException as exc:
        return False, f"DNS lookup of {name} failed: {exc.__class__.__name__}"
    want = ", ".join(sorted(edge_addresses))
    if not found:
        return False, f"{name} has no A or AAAA record; point it at this edge ({want})"
    stray = sorted(found - edge_addresses)
    if stray:
        return False, f"{name} resolves to {', '.join(stray)}, not this edge ({want})"
    return True, ""

"""Egress policy entries -> what the firewall enforces. Pure; unit-tested.

Entry forms (allow_out and deny_out):
  203.0.113.0/24     a CIDR            203.0.113.7        an address
  203.0.113.7:443    address and port  203.0.113.0/24:443 CIDR and port
  :25                a port, any address
  example.com        a domain name     *.example.com      any name under it
A port applies to TCP and UDP. Domains are allow-only. Precedence: allow beats
deny beats the default (`internet`); host-wide always-deny comes first.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .errors import InvalidArgument
from .models import EgressPolicy

MAX_ENTRIES = 256
DOMAIN_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]\.?$")
ANY = ipaddress.IPv4Network("0.0.0.0/0")


@dataclass(frozen=True, order=True)
class NetPort:
    net: ipaddress.IPv4Network
    port: int | None = None


@dataclass(frozen=True)
class CompiledPolicy:
    internet: bool
    allow: tuple[NetPort, ...]
    deny: tuple[NetPort, ...]
    domains: tuple[str, ...]


def parse_entry(entry: str, where: str) -> NetPort | str:
    """A NetPort, or a lower-cased domain name (str)."""
    text = entry.strip().lower()
    if not text or len(text) > 255:
        raise InvalidArgument(f"{where}: empty or overlong entry {entry!r}")
    if DOMAIN_RE.match(text) and not text.replace(".", "").replace("*", "").isdigit():
        return text.rstrip(".")
    addr, sep, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    port = None
    if sep:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise InvalidArgument(f"{where}: bad port in {entry!r} (1-65535)")
        port = int(port_text)
    try:
        net = ipaddress.IPv4Network(addr, strict=False) if addr else ANY
    except ValueError:
        raise InvalidArgument(f"{where}: {entry!r} is not a CIDR, address, address:port, :port or domain") from None
    if addr and "/" in addr and net.network_address != ipaddress.IPv4Interface(addr).ip:
        raise InvalidArgument(f"{where}: {entry!r} has host bits set (did you mean {net}?)")
    return NetPort(net, port)


def compile_policy(policy: EgressPolicy, default_internet: bool = True) -> CompiledPolicy:
    """Validate every entry (all or nothing) and normalise the lists."""
    for name, entries in (("allow_out", policy.allow_out), ("deny_out", policy.deny_out)):
        if len(entries) > MAX_ENTRIES:
            raise InvalidArgument(f"{name}: {len(entries)} entries; the limit is {MAX_ENTRIES}")
    allow = [parse_entry(e, f"allow_out[{i}]") for i, e in enumerate(policy.allow_out)]
    deny = [parse_entry(e, f"deny_out[{i}]") for i, e in enumerate(policy.deny_out)]
    for i, d in enumerate(deny):
        if isinstance(d, str):
            raise InvalidArgument(f"deny_out[{i}]: domains are allow-only ({d!r}); deny by CIDR")
    internet = default_internet if policy.internet is None else policy.internet
    return CompiledPolicy(
        internet=internet,
        allow=_normalise([a for a in allow if isinstance(a, NetPort)]),
        deny=_normalise([d for d in deny if isinstance(d, NetPort)]),
        domains=tuple(sorted({a for a in allow if isinstance(a, str)})),
    )


def _normalise(items: list[NetPort]) -> tuple[NetPort, ...]:
    """Collapse overlapping networks per port (nft interval sets refuse overlaps)."""
    by_port: dict[int | None, list[ipaddress.IPv4Network]] = {}
    for item in items:
        by_port.setdefault(item.port, []).append(item.net)
    out = [NetPort(net, port) for port, nets in by_port.items() for net in ipaddress.collapse_addresses(nets)]
    return tuple(sorted(out, key=lambda np: (np.port or 0, int(np.net.network_address), np.net.prefixlen)))


def narrows(old: CompiledPolicy, new: CompiledPolicy) -> bool:
    """True unless `new` allows at least everything `old` did (then no flush)."""
    if old.internet and not new.internet:
        return True
    if set(old.allow) - set(new.allow) or set(new.deny) - set(old.deny) or set(old.domains) - set(new.domains):
        return True
    return False


def domain_allowed(name: str, domains: tuple[str, ...]) -> bool:
    """`allowed.test` matches itself; `*.cdn.test` matches any name below
    cdn.test (not cdn.test itself)."""
    name = name.lower().rstrip(".")
    for d in domains:
        if d.startswith("*."):
            if name.endswith(d[1:]):
                return True
        elif name == d:
            return True
    return False

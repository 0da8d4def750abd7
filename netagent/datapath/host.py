"""Facts about, and settings of, the host netns the agent operates in."""
from __future__ import annotations

from dataclasses import dataclass

from pyroute2 import IPRoute

from .. import netns
from ..errors import ConfigError

HOST_SYSCTLS = (("net.ipv4.ip_forward", "1"),)


@dataclass(frozen=True)
class HostInfo:
    uplink: str
    addresses: list[str]          # every IPv4 address of the host netns
    uplink_addresses: list[str]


def discover(ipr: IPRoute, uplink: str | None) -> HostInfo:
    """Find the uplink (device of the default route unless configured) and the
    host's own IPv4 addresses."""
    if uplink is None:
        routes = ipr.get_default_routes(family=2)
        if not routes:
            raise ConfigError("uplink: no default route in the host netns; set `uplink` explicitly")
        uplink = ipr.get_links(routes[0].get("oif"))[0].get("ifname")
    elif not ipr.link_lookup(ifname=uplink):
        raise ConfigError(f"uplink: interface {uplink!r} does not exist in the host netns")
    all_addrs = ipr.get_addr(family=2)
    addrs = sorted({a.get("address") for a in all_addrs} - {None})
    index = ipr.link_lookup(ifname=uplink)[0]
    uplink_addrs = sorted({a.get("address") for a in all_addrs if a["index"] == index} - {None})
    return HostInfo(uplink=uplink, addresses=addrs, uplink_addresses=uplink_addrs)


def apply_sysctls() -> None:
    for key, value in HOST_SYSCTLS:
        netns.write_sysctl(key, value)


def link_names(ipr: IPRoute) -> list[str]:
    return [link.get("ifname") for link in ipr.get_links()]

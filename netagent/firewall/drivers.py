"""The one place the host table's firewall driver is chosen (config
`firewall_driver`): "netlink" (the default) sends element changes as raw
nf_tables batches (firewall/netlink_driver.py); "libnftables" sends every
transaction through libnftables (firewall/driver.py HostTable), as before."""
from __future__ import annotations

from .driver import FirewallDriver, HostTable
from .generation import GenerationWatch
from .netlink_driver import NetlinkHostTable

DRIVERS = {"netlink": NetlinkHostTable, "libnftables": HostTable}


def open_driver(kind: str, table: str, watch: GenerationWatch | None = None) -> FirewallDriver:
    """A driver for `inet <table>` in the calling thread's netns."""
    try:
        make = DRIVERS[kind]
    except KeyError:
        raise ValueError(f"unknown firewall driver {kind!r} (known: {', '.join(DRIVERS)})") from None
    return make(table, watch=watch)

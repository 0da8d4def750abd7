"""Per-sandbox bandwidth limits: a tbf qdisc on each end of the slot's veth
(and, through `apply`, the packet-rate table of datapath/pps.py).

What the sandbox receives is shaped on the host veth (its egress is toward
the slot); what it sends, on the slot's own veth0 (its egress is toward the
host). Shaping (queueing, then sending at the rate) rather than policing
(dropping above the rate): TCP gets the full rate instead of sawing under
drops (docs/performance.md has both measured). pyroute2's tbf takes a 32-bit
bytes/s rate, hence Limits' bound of 32 Gbit/s.
"""
from __future__ import annotations

import errno
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import netns
from ..addressing import SlotAddresses
from ..config import GuestPlan
from ..models import Limits
from . import pps

MIN_BURST = 16 * 1024
LATENCY = "50ms"     # queue bound: packets that would wait longer are dropped


def tbf_params(bps: int, burst: int | None) -> dict[str, object]:
    """Pure: tbf arguments for a rate in bits/s (burst: 10 ms of it, at least 16 KiB)."""
    return {"rate": f"{bps}bit", "burst": burst or max(bps // 8 // 100, MIN_BURST), "latency": LATENCY}


def set_root(ipr: IPRoute, ifname: str, bps: int | None, burst: int | None) -> None:
    """Replace the link's root qdisc with tbf at `bps`, or (None) back to the default."""
    index = socket.if_nametoindex(ifname)
    if bps is not None:
        ipr.tc("replace", "tbf", index, **tbf_params(bps, burst))
        return
    try:
        ipr.tc("del", index=index, parent=0xFFFFFFFF)   # TC_H_ROOT
    except NetlinkError as exc:
        if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):  # no root qdisc of ours: nothing to do
            raise


def apply(host_ipr: IPRoute, slot: SlotAddresses, guest: GuestPlan, limits: Limits) -> None:
    """All of `limits` on one slot, from the calling thread (in the host netns):
    the host veth's qdisc here; the slot veth's qdisc and the packet-rate table
    from inside the slot's netns."""
    set_root(host_ipr, slot.host_veth, limits.ingress_bps, limits.burst_bytes)
    with netns.entered(netns.path_of(slot.netns)), IPRoute() as ipr:
        set_root(ipr, guest.veth_name, limits.egress_bps, limits.burst_bytes)
        pps.apply(guest.tap_name, limits)

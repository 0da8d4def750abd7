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

import contextlib
import errno
import socket
from collections.abc import Callable

from pyroute2 import IPRoute

from .. import netns
from ..addressing import SlotAddresses
from ..config import GuestPlan
from ..models import Limits
from . import pps, rtnl

MIN_BURST = 16 * 1024
LATENCY = "50ms"     # queue bound: packets that would wait longer are dropped


def tbf_params(bps: int, burst: int | None) -> dict[str, object]:
    """Pure: tbf arguments for a rate in bits/s (burst: 10 ms of it, at least 16 KiB)."""
    return {"rate": f"{bps}bit", "burst": burst or max(bps // 8 // 100, MIN_BURST), "latency": LATENCY}


def set_root(ipr: Callable[[], IPRoute], nl: rtnl.Rtnl, ifname: str, bps: int | None, burst: int | None) -> None:
    """Replace the link's root qdisc with tbf at `bps` (pyroute2, made on demand), or
    (None) back to the default with one raw RTM_DELQDISC: every clean of a released
    slot takes this path, and pyroute2's request layer is Python holding the GIL."""
    index = socket.if_nametoindex(ifname)
    if bps is not None:
        ipr().tc("replace", "tbf", index, **tbf_params(bps, burst))
        return
    nl.run([rtnl.qdisc_del_root(index)],   # refused when no root qdisc of ours is there: nothing to do
           ok_errors=frozenset({errno.ENOENT, errno.EINVAL, errno.ENODEV}))


def apply(host_ipr: Callable[[], IPRoute], host_rtnl: rtnl.Rtnl, slot: SlotAddresses, guest: GuestPlan,
          limits: Limits) -> None:
    """All of `limits` on one slot, from the calling thread (in the host netns):
    the host veth's qdisc here; the slot veth's qdisc and the packet-rate table
    from inside the slot's netns."""
    set_root(host_ipr, host_rtnl, slot.host_veth, limits.ingress_bps, limits.burst_bytes)
    with netns.entered(netns.path_of(slot.netns)), rtnl.Rtnl() as nl, contextlib.ExitStack() as made:
        set_root(lambda: made.enter_context(IPRoute()), nl, guest.veth_name, limits.egress_bps, limits.burst_bytes)
        pps.apply(guest.tap_name, limits)

"""Build and destroy one slot: netns, veth pair, tap, addresses, route, sysctls and
the in-slot nft tables. Runs in a worker thread that sits in the host netns and
setns(2)es into the slot; no fork, no `ip`/`nft` subprocess."""
from __future__ import annotations

import errno
import os
import socket
import struct
import threading

from pyroute2 import IPRoute

from .. import netns
from ..addressing import AddressPlan, SlotAddresses
from ..config import Config
from ..firewall.nft import connect
from ..firewall.ruleset import fingerprint, slot_script
from . import rtnl
from .devconf import link_conf
from .tap import create_persistent_tap


class SlotBuilder:
    def __init__(self, config: Config, plan: AddressPlan, slot_source: str):
        self.config = config
        self.plan = plan
        self.slot_source = slot_source
        self._local = threading.local()

    def host_ipr(self) -> IPRoute:
        """This thread's rtnetlink socket in the host netns (threads stay there)."""
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            ipr = self._local.ipr = IPRoute()
        return ipr

    def host_rtnl(self) -> rtnl.Rtnl:
        """This thread's raw rtnetlink socket in the host netns (the build path)."""
        nl = getattr(self._local, "rtnl", None)
        if nl is None:
            nl = self._local.rtnl = rtnl.Rtnl()
        return nl

    def build(self, index: int) -> SlotAddresses:
        slot = self.plan.slot(index)
        host_fd = netns.current_fd()
        try:
            path = netns.create(slot.netns)
            with netns.entered(path):
                self._build_inside(slot, host_fd)
            self._build_host_side(slot)
        except BaseException:
            self.destroy(index)
            raise
        finally:
            os.close(host_fd)
        return slot

    def _build_inside(self, slot: SlotAddresses, host_fd: int) -> None:
        g = self.config.guest
        create_persistent_tap(g.tap_name)   # no rtnetlink for tun: an ioctl
        tap = socket.if_nametoindex(g.tap_name)
        veth = tap + 1   # a fresh netns holds only lo and the tap: this index is free
        with rtnl.Rtnl() as nl:   # opened inside the slot netns; one batch, one send
            nl.run([rtnl.link_up(1),  # lo
                    rtnl.veth_add(g.veth_name, g.mtu, slot.host_veth, host_fd, index=veth,
                                  mac=slot.sandbox_mac, peer_mac=slot.host_mac),
                    link_conf(tap), link_conf(veth),  # forwarding on, no IPv6: netlink, not /proc/sys
                    rtnl.link_set(tap, mac=g.tap_mac, mtu=g.mtu, up=True),
                    rtnl.addr_add(tap, str(g.gateway_ip), g.prefixlen),
                    rtnl.addr_add(veth, str(slot.sandbox_ip), 31),
                    rtnl.link_up(veth),   # before the route: an onlink route needs its device up
                    rtnl.default_route_onlink(str(slot.host_ip), veth),
                    # pinned neighbours (MACs known by construction; the tap guard
                    # admits guest_mac only): no ARP, nothing against gc_thresh3
                    rtnl.neigh_pin(veth, str(slot.host_ip), slot.host_mac),
                    rtnl.neigh_pin(tap, str(g.guest_ip), g.guest_mac)])
        connect().run(slot_script(self.config, self.slot_source, str(slot.host_ip)))

    def host_link_ids(self, index: int) -> tuple[int | None, int | None]:
        """(ifindex, link netns id) of the slot's host veth: how kernel notices name the slot."""
        try:
            ifindex = socket.if_nametoindex(self.plan.host_veth(index))
        except OSError:
            return None, None
        replies = self.host_rtnl().run([rtnl.get_link(ifindex)])
        netnsid = rtnl.link_attr(replies[0], rtnl.IFLA_LINK_NETNSID) if replies else None
        return ifindex, struct.unpack("=i", netnsid)[0] if netnsid else None

    def rules_text(self, index: int) -> str:
        """The in-slot ruleset of this slot, as loaded."""
        return slot_script(self.config, self.slot_source, str(self.plan.slot(index).host_ip))

    def rules_fingerprint(self) -> str:
        """Changes when rules/slot.nft or what it is rendered with changes."""
        return fingerprint(slot_script(self.config, self.slot_source, "0.0.0.0"))

    def reload_rules(self, index: int) -> None:
        """Replace the in-slot tables atomically (an upgraded rules/slot.nft);
        the slot's conntrack entries, and so its flows, stay."""
        slot = self.plan.slot(index)
        replace = ("table ip netagent_slot {}\ndelete table ip netagent_slot\n"
                   "table netdev netagent_guard {}\ndelete table netdev netagent_guard\n")
        with netns.entered(netns.path_of(slot.netns)):
            connect().run(replace + slot_script(self.config, self.slot_source, str(slot.host_ip)))

    def _build_host_side(self, slot: SlotAddresses) -> None:
        index = socket.if_nametoindex(slot.host_veth)
        self.host_rtnl().run([link_conf(index),  # no IPv6 link-local, so no neighbour discovery chatter either
                              rtnl.addr_add(index, str(slot.host_ip), 31),
                              rtnl.link_up(index),
                              rtnl.neigh_pin(index, str(slot.sandbox_ip), slot.sandbox_mac)])

    def destroy(self, index: int) -> None:
        """Remove the slot's kernel objects; absent objects are not an error."""
        slot = self.plan.slot(index)
        self.host_rtnl().run([rtnl.link_del(slot.host_veth)], ok_errors=frozenset({errno.ENODEV, errno.ENOENT}))
        netns.delete(slot.netns)

    def flush_slot_conntrack(self, index: int) -> None:
        from .conntrack import flush_all
        with netns.entered(netns.path_of(self.plan.netns(index))):
            flush_all()

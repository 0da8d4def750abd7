"""Build and destroy one slot: netns, veth pair, tap, addresses, route, sysctls and
the in-slot nft tables. Runs in a worker thread that sits in the host netns and
setns(2)es into the slot; no fork, no `ip`/`nft` subprocess."""
from __future__ import annotations

import errno
import os
import socket
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import netns
from ..addressing import AddressPlan, SlotAddresses
from ..config import Config
from ..firewall.nft import connect
from ..firewall.ruleset import fingerprint, slot_script
from .devconf import route_devices
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
        with IPRoute() as ipr:
            ipr.link("set", index=1, state="up")  # lo
            ipr.link("add", ifname=g.veth_name, kind="veth", mtu=g.mtu,
                     peer={"ifname": slot.host_veth, "net_ns_fd": host_fd, "mtu": g.mtu})
            create_persistent_tap(g.tap_name)
            tap = socket.if_nametoindex(g.tap_name)  # one ioctl; link_lookup costs a netlink dump
            veth = socket.if_nametoindex(g.veth_name)
            route_devices([tap, veth])  # forwarding on, no IPv6: netlink, not /proc/sys
            ipr.link("set", index=tap, address=g.tap_mac, mtu=g.mtu, state="up")
            ipr.addr("add", index=tap, address=str(g.gateway_ip), prefixlen=g.prefixlen)
            ipr.addr("add", index=veth, address=str(slot.sandbox_ip), prefixlen=31)
            ipr.link("set", index=veth, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=str(slot.host_ip), oif=veth, flags=4)  # RTNH_F_ONLINK
        connect().run(slot_script(self.config, self.slot_source, str(slot.host_ip)))

    def host_link_ids(self, index: int) -> tuple[int | None, int | None]:
        """(ifindex, link netns id) of the slot's host veth: how kernel notices name the slot."""
        try:
            ifindex = socket.if_nametoindex(self.plan.host_veth(index))
        except OSError:
            return None, None
        link = self.host_ipr().get_links(ifindex)[0]
        return ifindex, link.get_attr("IFLA_LINK_NETNSID")

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
        ipr = self.host_ipr()
        index = socket.if_nametoindex(slot.host_veth)
        route_devices([index])  # no IPv6 link-local, so no neighbour discovery chatter either
        ipr.addr("add", index=index, address=str(slot.host_ip), prefixlen=31)
        ipr.link("set", index=index, state="up")

    def destroy(self, index: int) -> None:
        """Remove the slot's kernel objects; absent objects are not an error."""
        slot = self.plan.slot(index)
        try:
            self.host_ipr().link("del", ifname=slot.host_veth)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):
                raise
        netns.delete(slot.netns)

    def flush_slot_conntrack(self, index: int) -> None:
        from .conntrack import flush_all
        with netns.entered(netns.path_of(self.plan.netns(index))):
            flush_all()

"""Kernel facts of slots, for continuous reconcile (core/repair.py plans on
them), the repairs themselves, and the kernel notices that start them. Worker threads only: the host side is read
from the thread's own netns (the host netns), the slot side by entering the
slot's netns and coming back."""
from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import netns
from ..addressing import AddressPlan
from ..config import GuestPlan
from ..core.repair import Fix, SlotFacts
from ..firewall.nft import connect
from ..workers import BuildPool, HostWorker
from .devconf import route_devices
from .kernel_events import Notice, open_sockets, parse, receive
from .slot_builder import SlotBuilder
from .tap import create_persistent_tap

NUD_PERMANENT = 0x80

IFF_UP = 0x1
SIOCGIFFLAGS, SIOCGIFADDR = 0x8913, 0x8915
SLOT_TABLES = (("ip", "netagent_slot"), ("netdev", "netagent_guard"))

# The checks use ioctls, /proc and one nft listing: an rtnetlink socket per
# slot costs ~2 ms of CPU to make, which a sweep over thousands of slots
# cannot afford (see docs/performance.md).


def _ifreq(sock: socket.socket, name: str, request: int) -> bytes | None:
    """One interface ioctl in the socket's netns (None: no such interface or address)."""
    try:
        return fcntl.ioctl(sock.fileno(), request, struct.pack("16s16x", name.encode()))
    except OSError:
        return None


def _link(sock: socket.socket, name: str) -> tuple[bool, bool]:
    """(exists, administratively up)."""
    res = _ifreq(sock, name, SIOCGIFFLAGS)
    return res is not None, res is not None and bool(struct.unpack_from("=H", res, 16)[0] & IFF_UP)


def _address(sock: socket.socket, name: str) -> str | None:
    res = _ifreq(sock, name, SIOCGIFADDR)
    return socket.inet_ntoa(res[20:24]) if res else None


def _default_route_via(ifname: str) -> bool:
    """The calling thread's netns has a default route out of ifname."""
    with open("/proc/thread-self/net/route") as f:
        return any(cols[0] == ifname and cols[1] == "00000000" and cols[7] == "00000000"
                   for line in f.readlines()[1:] if len(cols := line.split()) > 7)


def gather(addresses: AddressPlan, guest: GuestPlan, slots: Iterable[int]) -> dict[int, SlotFacts]:
    """Facts of these slots (called on a host-netns worker thread)."""
    out: dict[int, SlotFacts] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host:
        for idx in slots:
            s = addresses.slot(idx)
            path = netns.path_of(s.netns)
            if not os.path.exists(path):
                out[idx] = SlotFacts(netns=False)
                continue
            exists, up = _link(host, s.host_veth)
            host_facts = {"host_veth": exists, "host_veth_up": up,
                          "host_address": _address(host, s.host_veth) == str(s.host_ip)}
            with netns.entered(path):
                out[idx] = SlotFacts(netns=True, **host_facts, **_inside(guest))
    return out


def _inside(guest: GuestPlan) -> dict[str, bool]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        veth, veth_up = _link(sock, guest.veth_name)
        tap, _ = _link(sock, guest.tap_name)
    tables = connect().all_tables()
    return {"slot_veth": veth, "slot_veth_up": veth_up, "tap": tap,
            "route": veth and _default_route_via(guest.veth_name),
            "slot_rules": all(t in tables for t in SLOT_TABLES)}


def _index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def repair(addresses: AddressPlan, guest: GuestPlan, host_ipr: IPRoute, idx: int, fixes: frozenset[Fix],
           slot_rules: str) -> None:
    """Apply the fixes to one slot (host-netns worker thread)."""
    s = addresses.slot(idx)
    home = netns.current_fd()
    try:
        with netns.entered(netns.path_of(s.netns)), IPRoute() as ipr:
            if Fix.VETH in fixes:
                _drop_link(ipr, guest.veth_name)
                ipr.link("add", ifname=guest.veth_name, kind="veth", mtu=guest.mtu, address=s.sandbox_mac,
                         peer={"ifname": s.host_veth, "net_ns_fd": home, "mtu": guest.mtu, "address": s.host_mac})
                veth = socket.if_nametoindex(guest.veth_name)
                route_devices([veth])
                ipr.addr("add", index=veth, address=str(s.sandbox_ip), prefixlen=31)
            if Fix.TAP in fixes:
                create_persistent_tap(guest.tap_name)
                tap = socket.if_nametoindex(guest.tap_name)
                route_devices([tap])
                ipr.link("set", index=tap, address=guest.tap_mac, mtu=guest.mtu, state="up")
                ipr.addr("add", index=tap, address=str(guest.gateway_ip), prefixlen=guest.prefixlen)
            veth = socket.if_nametoindex(guest.veth_name)
            if fixes & {Fix.VETH, Fix.SLOT_VETH_UP}:
                ipr.link("set", index=veth, state="up")
            if fixes & {Fix.VETH, Fix.SLOT_VETH_UP, Fix.ROUTE}:
                _ensure(lambda: ipr.route("add", dst="0.0.0.0/0", gateway=str(s.host_ip), oif=veth, flags=4))
            if fixes & {Fix.VETH, Fix.SLOT_VETH_UP}:     # a link brought up again lost its entries
                _pin(ipr, veth, str(s.host_ip), s.host_mac)
            if Fix.TAP in fixes:
                _pin(ipr, socket.if_nametoindex(guest.tap_name), str(guest.guest_ip), guest.guest_mac)
            if Fix.SLOT_RULES in fixes:
                replace = "".join(f"table {f} {n} {{}}\ndelete table {f} {n}\n" for f, n in SLOT_TABLES)
                connect().run(replace + slot_rules)
    finally:
        os.close(home)
    host = socket.if_nametoindex(s.host_veth)
    if Fix.VETH in fixes:
        route_devices([host])
    if fixes & {Fix.VETH, Fix.HOST_ADDRESS}:
        _ensure(lambda: host_ipr.addr("add", index=host, address=str(s.host_ip), prefixlen=31))
    if fixes & {Fix.VETH, Fix.HOST_VETH_UP}:
        host_ipr.link("set", index=host, state="up")
        _pin(host_ipr, host, str(s.sandbox_ip), s.sandbox_mac)


def _pin(ipr: IPRoute, index: int, address: str, mac: str) -> None:
    """The slot's permanent neighbour entry (slot_builder.py), created or replaced."""
    ipr.neigh("replace", dst=address, lladdr=mac, ifindex=index, state=NUD_PERMANENT)


def _drop_link(ipr: IPRoute, name: str) -> None:
    if (idx := _index(name)) is not None:
        ipr.link("del", index=idx)


def _ensure(add: object) -> None:
    """Run an add; EEXIST means it is already there (a repair raced another)."""
    try:
        add()  # type: ignore[operator]
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


class SlotRepairIO:
    """The I/O side of continuous reconcile: facts and repairs on the build
    threads, host link listings on the host worker, and the kernel notice
    sockets read on the event loop."""

    def __init__(self, addresses: AddressPlan, guest: GuestPlan, builder: SlotBuilder, builds: BuildPool,
                 host: HostWorker):
        self.addresses = addresses
        self.guest = guest
        self.builder = builder
        self.builds = builds
        self.host = host
        self._socks: list[socket.socket] = []

    async def gather(self, slots: list[int]) -> dict[int, SlotFacts]:
        return await self.builds.call(lambda: gather(self.addresses, self.guest, slots))

    async def repair(self, idx: int, fixes: frozenset[Fix]) -> tuple[int | None, int | None]:
        """Fix the slot; its host veth's (index, netns id) afterwards (new if the pair was recreated)."""
        def work() -> tuple[int | None, int | None]:
            repair(self.addresses, self.guest, self.builder.host_ipr(), idx, fixes, self.builder.rules_text(idx))
            return self.builder.host_link_ids(idx)
        return await self.builds.call(work)

    async def host_links(self) -> list[tuple[str, int, int | None]]:
        def links() -> list[tuple[str, int, int | None]]:
            return [(ln.get_attr("IFLA_IFNAME"), ln["index"], ln.get_attr("IFLA_LINK_NETNSID"))
                    for ln in self.builder.host_ipr().get_links()]
        return await self.host.call(links)

    async def listen(self, on_notices: Callable[[list[Notice]], None], overflowed: Callable[[], None]) -> None:
        self._socks = await self.host.call(open_sockets)   # sockets keep the host netns
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            loop.add_reader(sock.fileno(), self._drain, sock, sock is self._socks[0], on_notices, overflowed)

    def _drain(self, sock: socket.socket, rtnetlink: bool, on_notices: Callable[[list[Notice]], None],
               overflowed: Callable[[], None]) -> None:
        for _ in range(256):
            try:
                data, nsid = receive(sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    overflowed()
                    continue
                raise
            on_notices(parse(data, nsid, rtnetlink))

    def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._socks = []

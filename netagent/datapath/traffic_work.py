"""The kernel work behind usage accounting and bandwidth and packet-rate limits,
on worker threads: read the usage counters, set a slot's qdiscs and packet-rate table. (A released slot's
flows die with its live marks, datapath.md "Flow kills": nothing to end here.)"""
from __future__ import annotations

from collections.abc import Callable

from ..addressing import AddressPlan
from ..config import GuestPlan
from ..firewall.driver import FirewallDriver, UsageReading
from ..models import Limits
from ..workers import BuildPool, Cleaner, Readers
from . import shaper
from .slot_builder import SlotBuilder


class TrafficWork:
    def __init__(self, addresses: AddressPlan, builder: SlotBuilder, builds: BuildPool, cleaner: Cleaner,
                 cleaner_fw: Callable[[], FirewallDriver], readers: Readers, readers_fw: Callable[[], FirewallDriver],
                 guest: Callable[[], GuestPlan]):
        self.addresses = addresses
        self.builder = builder
        self.builds = builds
        self.cleaner = cleaner
        self.cleaner_fw = cleaner_fw
        self.readers = readers       # the periodic full reading: never holds up cleaning
        self.readers_fw = readers_fw
        self.guest = guest   # read at each call: the config may be swapped (SIGHUP)

    async def read_usage(self) -> UsageReading:
        return await self.readers.call(lambda: self.readers_fw().usage())

    async def read_usage_of(self, ips: list[str]) -> UsageReading:
        return await self.cleaner.call(lambda: self.cleaner_fw().usage_of(ips))

    async def shape(self, shapes: list[tuple[int, Limits]]) -> None:
        await self.builds.call(self._shape, shapes)

    def _shape(self, shapes: list[tuple[int, Limits]]) -> None:
        """Builds thread: each slot's qdiscs and packet-rate table to its limits."""
        for idx, limits in shapes:
            b = self.builder
            shaper.apply(b.host_ipr, b.host_rtnl(), self.addresses.slot(idx), self.guest(), limits)

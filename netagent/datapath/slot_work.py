"""The kernel work behind the warm pool and reconcile, on worker threads:
build and destroy a slot, clean a released one, list the slots the kernel has."""
from __future__ import annotations

import logging
from collections.abc import Callable

from .. import netns
from ..addressing import AddressPlan
from ..firewall import elements as el
from ..firewall import names
from ..firewall.driver import FirewallDriver
from ..models import Limits
from ..workers import BuildPool, Cleaner, HostWorker
from . import conntrack, shaper
from .host import link_names
from .slot_builder import SlotBuilder

log = logging.getLogger("netagent.slots")


class SlotWork:
    def __init__(self, addresses: AddressPlan, builder: SlotBuilder, host: HostWorker, builds: BuildPool,
                 cleaner: Cleaner, cleaner_fw: Callable[[], FirewallDriver],
                 forget_admissions: Callable[[FirewallDriver, str], None],
                 on_built: Callable[[int, int | None, int | None], None] = lambda i, x, n: None):
        self.addresses = addresses
        self.builder = builder
        self.host = host
        self.builds = builds
        self.cleaner = cleaner
        self.cleaner_fw = cleaner_fw
        self.forget_admissions = forget_admissions
        self.on_built = on_built   # (slot, host veth ifindex, netns id), on the event loop

    async def build(self, idx: int) -> None:
        def work() -> tuple[int | None, int | None]:
            self.builder.build(idx)
            return self.builder.host_link_ids(idx)
        self.on_built(idx, *await self.builds.call(work))

    async def destroy(self, idx: int) -> None:
        await self.builds.call(self.builder.destroy, idx)

    async def reload_rules(self, idx: int) -> None:
        await self.builds.call(self.builder.reload_rules, idx)

    async def clean(self, idx: int) -> None:
        await self.cleaner.call(self._clean, idx)

    def _clean(self, idx: int) -> None:
        """Cleaner thread: flows of both directions and every mark generation
        (already dead: their marks left live_marks at release), leftover
        elements, DNS admissions, then the slot's own conntrack."""
        slot = self.addresses.slot(idx)
        conntrack.flush_mark(*slot.any_mark)
        fw = self.cleaner_fw()
        for mode in (names.EGRESS_OPEN, names.EGRESS_BLOCKED):
            leftover = el.Element(mode, str(slot.sandbox_ip))
            if fw.has(leftover):  # one added by hand, or by a bug, would let the next tenant out early
                log.warning("slot %d had a leftover %s element for %s; removing it", idx, mode, slot.sandbox_ip)
                fw.apply([el.Op("delete", leftover)])
        b = self.builder
        shaper.apply(b.host_ipr, b.host_rtnl(), slot, b.config.guest, Limits())  # unlimited again
        # usage counters start from 0 for the next tenant. CloseUsage removed them
        # already: look (netlink, cheap) before committing a transaction per release
        if left := [e for e in el.usage_elements(str(slot.sandbox_ip)) if fw.has(e)]:
            fw.apply(el.delete(left))
        self.forget_admissions(fw, str(slot.sandbox_ip))
        self.builder.flush_slot_conntrack(idx)

    async def kernel_slots(self) -> tuple[set[int], set[int]]:
        """Slot indexes that have a netns, and that have a host veth."""
        return await self.host.call(self._kernel_slots)

    def _kernel_slots(self) -> tuple[set[int], set[int]]:
        a = self.addresses
        with_netns = {i for n in netns.list_names(f"{a.prefix}-") if (i := a.index_of_netns(n)) is not None}
        with_veth = {i for n in link_names(self.builder.host_ipr()) if (i := a.index_of_host_veth(n)) is not None}
        return with_netns, with_veth

"""Pure address plan and naming: slot index <-> names <-> addresses.

It reads its settings through the small `AddressSettings` protocol (the
config satisfies it), so config.py may import this module and not the other
way round."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Protocol

CT_MARK_INGRESS = 0x80000000   # ingress flows differ from egress ones in this bit only
# A narrowing policy gives the sandbox's new egress flows a new mark (the slot's
# mark with its generation XORed into these bits), so the old flows fall out of
# the host table's live_marks set and die at once, with no conntrack walk.
CT_MARK_GEN_SHIFT = 16
CT_MARK_GENERATIONS = 256
CT_MARK_ANY_GEN = 0x7F00FFFF   # mask: a slot's flows of every generation, both directions
MAX_IFNAME = 15                # bytes of a Linux interface name


class AddressSettings(Protocol):
    prefix: str
    transit_cidr: ipaddress.IPv4Network
    guest: Any                 # guest_ip, gateway_ip, prefixlen (config.GuestPlan)
    ct_mark_base: int


def check_names_fit(prefix: str, transit_cidr: ipaddress.IPv4Network, guest_ip: ipaddress.IPv4Address) -> None:
    """ValueError unless every slot's names fit the kernel's limits and the
    guest address stays outside the transit range."""
    longest = f"{prefix}v{transit_cidr.num_addresses // 2 - 1}"
    if len(longest.encode()) > MAX_IFNAME:
        raise ValueError(f"prefix too long: interface {longest!r} would exceed {MAX_IFNAME} bytes")
    if transit_cidr.num_addresses // 2 > 0x10000:
        raise ValueError("transit_cidr may hold at most 65,536 slots (/15): a ct mark holds 16 bits of slot index")
    if guest_ip in transit_cidr:
        raise ValueError("transit_cidr must not contain the guest address")


@dataclass(frozen=True)
class SlotAddresses:
    index: int
    netns: str
    host_veth: str
    host_ip: ipaddress.IPv4Address      # even end of the /31, in the host netns
    sandbox_ip: ipaddress.IPv4Address   # odd end, in the slot netns
    ct_mark: int       # conntrack mark of flows the sandbox starts
    ct_mark_in: int    # ... and of flows to it (exposed ports, the host)

    def egress_mark(self, generation: int) -> int:
        """The mark of flows the sandbox starts under its policy generation
        `generation` (0: ct_mark). Unique per slot and generation modulo
        CT_MARK_GENERATIONS, because slot indexes stay below 65,536."""
        return self.ct_mark ^ ((generation % CT_MARK_GENERATIONS) << CT_MARK_GEN_SHIFT)

    @property
    def host_mac(self) -> str:
        """The host end's MAC (locally administered, from the index): the slot's
        neighbour entry for host_ip is pinned to it, so no ARP and no entry that
        counts against the kernel's shared neighbour table (datapath.md)."""
        return _slot_mac(0x68, self.index)

    @property
    def sandbox_mac(self) -> str:
        """The slot end's MAC; the host's entry for sandbox_ip is pinned to it."""
        return _slot_mac(0x73, self.index)

    @property
    def any_mark(self) -> tuple[int, int]:
        """(value, mask) matching the slot's flows of every generation and both
        directions; the kernel compares mark & mask with the value as given."""
        return self.ct_mark & CT_MARK_ANY_GEN, CT_MARK_ANY_GEN


def _slot_mac(side: int, index: int) -> str:
    return f"02:6e:{side:02x}:{index >> 16 & 0xff:02x}:{index >> 8 & 0xff:02x}:{index & 0xff:02x}"


class AddressPlan:
    def __init__(self, config: AddressSettings):
        self.prefix = config.prefix
        self.transit = config.transit_cidr
        self.guest = config.guest
        self.ct_mark_base = config.ct_mark_base
        self.capacity = self.transit.num_addresses // 2
        self._netns_re = re.compile(rf"^{re.escape(self.prefix)}-(\d+)$")
        self._veth_re = re.compile(rf"^{re.escape(self.prefix)}v(\d+)$")
        self._sandbox_index: dict[str, int] = {}
        self._sandbox_ip_text: dict[int, str] = {}

    def netns(self, index: int) -> str:
        return f"{self.prefix}-{self._check(index)}"

    def host_veth(self, index: int) -> str:
        return f"{self.prefix}v{self._check(index)}"

    def slot(self, index: int) -> SlotAddresses:
        base = int(self.transit.network_address) + 2 * self._check(index)
        return SlotAddresses(
            index=index,
            netns=self.netns(index),
            host_veth=self.host_veth(index),
            host_ip=ipaddress.IPv4Address(base),
            sandbox_ip=ipaddress.IPv4Address(base + 1),
            ct_mark=self.ct_mark_base + index,
            ct_mark_in=(self.ct_mark_base + index) | CT_MARK_INGRESS,
        )

    def sandbox_ip_text(self, index: int) -> str:
        """The slot's sandbox IP as text, kept: the usage meter and List ask for
        every allocated sandbox's (6.5 us each through `slot`; 13 ms a reading
        at 2,000 sandboxes, on the event loop). Bounded by the plan's capacity."""
        text = self._sandbox_ip_text.get(index)
        if text is None:
            text = self._sandbox_ip_text[index] = str(self.slot(index).sandbox_ip)
        return text

    def index_of_sandbox_ip(self, ip: str | ipaddress.IPv4Address) -> int:
        # A dict hit instead of an IPv4Address parse: the first-payload check
        # asks twice per queued packet (12% of its time in a py-spy profile),
        # the DNS proxy once per query. Only sandbox addresses are kept, so
        # the cache is bounded by the plan's capacity.
        key = str(ip)
        index = self._sandbox_index.get(key)
        if index is None:
            addr = ipaddress.IPv4Address(ip)
            if addr not in self.transit or int(addr) % 2 == 0:
                raise ValueError(f"{addr} is not a sandbox address of {self.transit}")
            index = self._sandbox_index[key] = (int(addr) - int(self.transit.network_address)) // 2
        return index

    def index_of_netns(self, name: str) -> int | None:
        return self._parse(self._netns_re, name)

    def index_of_host_veth(self, name: str) -> int | None:
        return self._parse(self._veth_re, name)

    def boot_ip_arg(self, hostname: str = "", dns: str | None = None) -> str:
        """The kernel `ip=` argument that configures the guest's eth0."""
        g = self.guest
        mask = ipaddress.IPv4Network(f"0.0.0.0/{g.prefixlen}").netmask
        arg = f"ip={g.guest_ip}::{g.gateway_ip}:{mask}:{hostname}:eth0:off"
        return f"{arg}:{dns}" if dns else arg

    def _parse(self, pattern: re.Pattern[str], name: str) -> int | None:
        m = pattern.match(name)
        if not m:
            return None
        index = int(m.group(1))
        if str(index) != m.group(1) or index >= self.capacity:
            return None
        return index

    def _check(self, index: int) -> int:
        if not 0 <= index < self.capacity:
            raise ValueError(f"slot index {index} outside 0..{self.capacity - 1}")
        return index

"""What callers see of an allocation (pure)."""
from __future__ import annotations

from collections.abc import Callable

from .. import netns
from ..addressing import AddressPlan
from ..config import GuestPlan
from ..models import ExposedPort, Network
from .allocation import Allocation
from .inventory import Inventory

PortView = Callable[[str, ExposedPort], ExposedPort]   # adds the prober's reachability


def plain_port(sandbox_id: str, port: ExposedPort) -> ExposedPort:
    return port


def network_of(addresses: AddressPlan, guest: GuestPlan, rec: Allocation, port_view: PortView = plain_port) -> Network:
    s = addresses.slot(rec.slot)
    return Network(
        sandbox_id=rec.sandbox_id, slot=rec.slot, netns=s.netns, netns_path=netns.path_of(s.netns),
        tap=guest.tap_name, guest_ip=str(guest.guest_ip), guest_prefixlen=guest.prefixlen,
        guest_netmask=addresses.boot_ip_arg().split(":")[3], gateway_ip=str(guest.gateway_ip),
        guest_mac=guest.guest_mac, mtu=guest.mtu, sandbox_ip=str(s.sandbox_ip), host_veth=s.host_veth,
        boot_ip_arg=addresses.boot_ip_arg(dns=str(guest.gateway_ip)), spec=rec.spec, policy=rec.policy,
        internet=bool(rec.policy.internet), created_at=rec.created_at, egress_address=rec.egress_address or "",
        limits=rec.limits,
        ports=tuple(port_view(rec.sandbox_id, p)
                    for p in sorted(rec.ports.values(), key=lambda p: (p.protocol.value, p.guest_port))))


def sandbox_ips(inventory: Inventory, addresses: AddressPlan) -> dict[str, str]:
    """Allocated sandbox -> its sandbox IP."""
    return {sid: addresses.sandbox_ip_text(rec.slot) for sid, rec in inventory.allocations.items()}

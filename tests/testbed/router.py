"""A router between the test bed's host and its internet, with a narrow link:

  host up0 198.51.100.2 ── MTU <mtu> ── r0 198.51.100.1 [router netns] r1 192.0.2.249 ── MTU 1500 ── wan0 192.0.2.250

The router drops the ICMP "fragmentation needed" it would send, like a path
that filters ICMP, so only MSS clamping keeps large segments off the narrow
link. Veths alone hide MTU limits (GSO): a router that must forward each
1500-byte packet onto a smaller link does not.
"""
from __future__ import annotations

from . import sh
from .bed import INET_IP, UPLINK_IP, Testbed

ROUTER_WAN_IP, INET_ROUTER_SIDE_IP = "192.0.2.249", "192.0.2.250"
DROP_FRAG_NEEDED = """table ip blackhole {
    chain output {
        type filter hook output priority filter; policy accept;
        icmp type destination-unreachable icmp code frag-needed counter drop
    }
}
"""


def insert_router(bed: Testbed, mtu: int) -> str:
    """Rewire the bed's uplink through a router netns (removed with the bed)."""
    router = f"{bed.prefix}r"
    sh.ip("netns", "add", router)
    sh.ip("link", "del", "up0", ns=bed.host)          # the bed's direct veth pair goes
    sh.ip("link", "add", "up0", "netns", bed.host, "mtu", str(mtu), "type", "veth",
          "peer", "name", "r0", "netns", router, "mtu", str(mtu))
    sh.ip("link", "add", "r1", "netns", router, "type", "veth", "peer", "name", "wan0", "netns", bed.inet)
    sh.ip("link", "set", "lo", "up", ns=router)
    for ns, dev, addr in ((bed.host, "up0", f"{UPLINK_IP}/24"), (router, "r0", f"{INET_IP}/24"),
                          (router, "r1", f"{ROUTER_WAN_IP}/30"), (bed.inet, "wan0", f"{INET_ROUTER_SIDE_IP}/30")):
        sh.ip("addr", "add", addr, "dev", dev, ns=ns)
        sh.ip("link", "set", dev, "up", ns=ns)
    sh.ip("route", "add", "default", "via", INET_IP, ns=bed.host)
    sh.ip("route", "add", "default", "via", ROUTER_WAN_IP, ns=bed.inet)
    sh.ip("route", "add", "default", "via", INET_ROUTER_SIDE_IP, ns=router)
    sh.run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward", ns=router)   # no procps needed
    sh.run("nft", "-f", "-", ns=router, input=DROP_FRAG_NEEDED)
    return router

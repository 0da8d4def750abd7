"""Craft a trace packet with scapy and put it on a wire: from a slot's veth
(as the sandbox's traffic looks after the slot's masquerade) or from a
temporary veth pair in the host netns (as internet traffic looks on arrival).
Every function acts in the calling thread's netns."""
from __future__ import annotations

import contextlib
import os
import socket
import time

from pyroute2 import IPRoute

from .table import Probe


def link_mac(ifname: str) -> str:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise LookupError(f"no link {ifname}")
        return str(ipr.get_links(idx[0])[0].get("IFLA_ADDRESS"))


def frame(probe: Probe, src_mac: str, dst_mac: str) -> bytes:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.l2 import Ether
    ip = IP(src=probe.saddr, dst=probe.daddr, id=probe.ip_id, ttl=64)
    if probe.proto == "tcp":
        l4 = TCP(sport=probe.sport, dport=probe.dport, flags="S", seq=probe.ip_id << 16)
    elif probe.proto == "udp":
        l4 = UDP(sport=probe.sport, dport=probe.dport) / b"netagent trace"
    else:
        l4 = ICMP(type=8, id=probe.ip_id, seq=1) / b"netagent trace"
    return bytes(Ether(src=src_mac, dst=dst_mac) / ip / l4)


def send_frame(ifname: str, data: bytes) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        s.send(data)


def add_pair(send_end: str, receive_end: str) -> str:
    """A veth pair for ingress traces, without IPv6 (no stray RS/DAD frames)
    and without rp_filter on the receiving end (its source is routed by the
    uplink). Returns the receiving end's MAC."""
    with IPRoute() as ipr:
        ipr.link("add", ifname=send_end, kind="veth", peer=receive_end)
        for name in (send_end, receive_end):
            _sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "1")
        _sysctl(f"net/ipv4/conf/{receive_end}/rp_filter", "0")
        for name in (send_end, receive_end):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        # Until the kernel's linkwatch marks them up, a fresh device's qdisc drops frames.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not all(
                ipr.get_links(ipr.link_lookup(ifname=n)[0])[0].get("IFLA_OPERSTATE") == "UP"
                for n in (send_end, receive_end)):
            time.sleep(0.02)
    return link_mac(receive_end)


def delete_link(ifname: str) -> None:
    with IPRoute() as ipr, contextlib.suppress(Exception):
        if idx := ipr.link_lookup(ifname=ifname):
            ipr.link("del", index=idx[0])


def strict_rp_filter() -> bool:
    """True if net.ipv4.conf.all.rp_filter is strict (1): the kernel would then
    drop an ingress trace packet before forwarding, whatever the device says."""
    try:
        with open("/proc/sys/net/ipv4/conf/all/rp_filter") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _sysctl(key: str, value: str) -> None:
    path = "/proc/sys/" + key
    if os.path.exists(path):
        with open(path, "w") as f:
            f.write(value)

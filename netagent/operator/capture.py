"""`netagent capture`: packets of one sandbox, on the slot's tap (what the
guest sends and receives, guest addresses) or the host veth (after the slot's
NAT: sandbox IP). The listening socket is opened inside the right netns; the
capture itself runs on the calling thread, so Ctrl-C stops it cleanly."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from ..config import Config
from .kernel import in_netns


class FilterUnavailable(RuntimeError):
    pass


def where(config: Config, sandbox: dict[str, Any], iface: str) -> tuple[str | None, str]:
    """(netns path, interface) to capture on."""
    net = sandbox["network"]
    if iface == "veth":
        return config.host_netns, net["hostVeth"]
    return net["netnsPath"], net["tap"]


def open_socket(netns_path: str | None, ifname: str, bpf: str | None) -> Any:
    import scapy.layers.inet  # noqa: F401 - registers the link and IP layers for decoding
    import scapy.layers.l2  # noqa: F401
    from scapy.arch.linux import L2ListenSocket
    if bpf and not shutil.which("tcpdump"):
        # scapy compiles BPF with tcpdump (or libpcap, which scapy only uses when asked to).
        raise FilterUnavailable("--filter needs tcpdump to compile the BPF expression: apt-get install tcpdump")
    return in_netns(netns_path, lambda: L2ListenSocket(iface=ifname, filter=bpf))


def capture(sock: Any, count: int, timeout: float | None, on_packet: Callable[[Any], None],
            pcap: str | None) -> int:
    """Read until `count` packets (0: no limit) or `timeout`; returns how many."""
    from scapy.sendrecv import sniff
    from scapy.utils import PcapWriter
    writer = PcapWriter(pcap, linktype=1, sync=True) if pcap else None
    seen = 0

    def each(pkt: Any) -> None:
        nonlocal seen
        seen += 1
        if writer:
            writer.write(pkt)
        on_packet(pkt)
    try:
        sniff(opened_socket=sock, count=count, timeout=timeout, prn=each, store=False)
    except KeyboardInterrupt:
        pass
    finally:
        if writer:
            writer.close()
        sock.close()
    return seen


def describe(pkt: Any) -> dict[str, Any]:
    """One packet as a line for people and a dict for scripts."""
    from datetime import datetime
    stamp = datetime.fromtimestamp(float(pkt.time)).strftime("%H:%M:%S.%f")
    return {"time": float(pkt.time), "length": len(pkt), "summary": pkt.summary(),
            "line": f"{stamp}  {len(pkt):5d}  {pkt.summary()}"}

"""The self-repair notice sockets (netagent/datapath/kernel_events.py) against
a real kernel, in a netns of the test's own: what an idle or busy host does
all the time (element adds and deletes, packets counted on set elements, a
counter dump, qdiscs set and their stats read) wakes the agent for nothing;
what breaks a slot (a deleted chain, a link gone) does."""
from __future__ import annotations

import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from netagent import netns
from netagent.datapath import kernel_events
from netagent.firewall import set_dump
from netagent.operator.kernel import in_netns
from tests.datapath.helpers import scratch_netns
from tests.testbed import sh

TABLE = """table inet nf {
  set usage { type ipv4_addr; counter; }
  chain out { type filter hook output priority 0; ip daddr @usage; }
  chain spare { }
}
"""


def pending(socks: list[socket.socket]) -> list[tuple[bytes, int | None]]:
    """Every datagram waiting on the sockets now (they are non-blocking)."""
    out = []
    for sock in socks:
        while True:
            try:
                out.append(kernel_events.receive(sock))
            except BlockingIOError:
                break
    return out


def test_counted_packets_element_churn_and_qdiscs_wake_nothing_but_a_deleted_chain_does():
    with scratch_netns("nfilt") as ns, ThreadPoolExecutor(1) as pool:
        path = netns.path_of(ns)
        sh.ip("link", "set", "lo", "up", ns=ns)
        pool.submit(netns.enter_for_good, path).result()     # the sockets belong to this netns
        socks = pool.submit(kernel_events.open_sockets).result()
        try:
            sh.run("nft", "-f", "-", ns=ns, input=TABLE)
            assert [k for d, _ in pending(socks) for k in _kinds(d)] == [], "a new table woke the agent"
            for i in range(20):   # allocate / release: element adds and deletes
                sh.run("nft", f"add element inet nf usage {{ 127.0.0.{i + 1} }}", ns=ns)
                if i % 2:
                    sh.run("nft", f"delete element inet nf usage {{ 127.0.0.{i} }}", ns=ns)

            def traffic() -> None:   # packets counted on an element (the usage sets' job)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    for _ in range(50):
                        s.sendto(b"x", ("127.0.0.2", 9))
            pool.submit(traffic).result()
            counted = in_netns(path, lambda: set_dump.counters("inet", "nf", ["usage"]))["usage"]
            assert counted["127.0.0.2"][0] >= 50
            sh.run("tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "1gbit", "burst", "64k",
                   "latency", "10ms", ns=ns)   # a shaper set, and its stats read
            sh.run("tc", "-s", "qdisc", "show", "dev", "lo", ns=ns)
            assert not select.select(socks, [], [], 0.5)[0], [list(_kinds(d)) for d, _ in pending(socks)]

            sh.run("nft", "delete", "chain", "inet", "nf", "spare", ns=ns)   # what self-repair is for
            deadline = time.monotonic() + 10
            woke: list[int] = []
            while not woke and time.monotonic() < deadline:
                select.select(socks, [], [], 0.5)
                woke = [k for d, _ in pending(socks) for k in _kinds(d)]
            assert woke == [(kernel_events.NFNL_SUBSYS_NFTABLES << 8) | kernel_events.NFT_MSG_DELCHAIN]
        finally:
            for sock in socks:
                sock.close()


def _kinds(data: bytes) -> list[int]:
    return [kind for kind, _ in _messages(data)]


def _messages(data: bytes):  # type: ignore[no-untyped-def]
    pos = 0
    while pos + kernel_events.NLMSG_HDR.size <= len(data):
        length, kind, _, _, _ = kernel_events.NLMSG_HDR.unpack_from(data, pos)
        if length < kernel_events.NLMSG_HDR.size:
            return
        yield kind, pos
        pos += (length + 3) & ~3

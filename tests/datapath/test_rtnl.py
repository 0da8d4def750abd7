"""Raw rtnetlink batches (datapath/rtnl.py) against a real kernel, in two
namespaces this test makes; read back with `ip`, an independent reader."""
from __future__ import annotations

import json
import os
import secrets

import pytest

from netagent import netns
from netagent.datapath import rtnl
from netagent.operator.kernel import in_netns as run_in_netns
from tests.testbed import sh


@pytest.fixture
def two_netns():
    names = [f"rt{secrets.token_hex(3)}a", f"rt{secrets.token_hex(3)}b"]
    for n in names:
        sh.run("ip", "netns", "add", n)
    try:
        yield names
    finally:
        for n in names:
            sh.run("ip", "netns", "del", n, check=False)


def in_netns(name: str, fn):
    return run_in_netns(netns.path_of(name), fn)


def test_one_batch_builds_a_veth_pair_across_netns_with_addresses_and_an_onlink_route(two_netns):
    inner, outer = two_netns

    def build() -> int:
        outer_fd = netns.current_fd()
        with netns.entered(netns.path_of(outer)):
            peer_fd = netns.current_fd()
        try:
            with rtnl.Rtnl() as nl:
                nl.run([rtnl.link_up(1),
                        rtnl.veth_add("v0", 1400, "peer0", peer_fd, index=7),
                        rtnl.link_set(7, mac="02:fc:00:00:00:09", up=True),
                        rtnl.addr_add(7, "10.200.0.1", 31),
                        rtnl.default_route_onlink("10.200.0.0", 7)])
                link = nl.run([rtnl.get_link(7)])[0]
            return len(rtnl.link_attr(link, rtnl.IFLA_IFNAME) or b"")
        finally:
            os.close(outer_fd)
            os.close(peer_fd)
    assert in_netns(inner, build) == len(b"v0\0")
    links = {x["ifname"]: x for x in json.loads(sh.run("ip", "-j", "link", "show", ns=inner).stdout)}
    assert links["v0"]["ifindex"] == 7 and links["v0"]["mtu"] == 1400
    assert links["v0"]["address"] == "02:fc:00:00:00:09" and "UP" in links["v0"]["flags"]
    assert "UP" in links["lo"]["flags"]
    addrs = json.loads(sh.run("ip", "-j", "-4", "addr", "show", "dev", "v0", ns=inner).stdout)
    assert [(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"]] == [("10.200.0.1", 31)]
    routes = json.loads(sh.run("ip", "-j", "-4", "route", "show", "default", ns=inner).stdout)
    assert [(r["gateway"], r["dev"], "onlink" in r["flags"]) for r in routes] == [("10.200.0.0", "v0", True)]
    peer = json.loads(sh.run("ip", "-j", "link", "show", "peer0", ns=outer).stdout)[0]
    assert peer["mtu"] == 1400


def test_a_refused_request_raises_naming_it_and_the_batch_reads_every_reply(two_netns):
    inner, _ = two_netns

    def run() -> tuple[str, list[bytes]]:
        with rtnl.Rtnl() as nl:
            with pytest.raises(OSError) as refused:
                nl.run([rtnl.addr_add(4242, "10.201.0.1", 31), rtnl.link_up(1)])
            # the socket is still in step: the next batch gets its own replies
            return str(refused.value), nl.run([rtnl.get_link(1)])
    message, replies = in_netns(inner, run)
    assert "add address 10.201.0.1/31 on ifindex 4242" in message and "No such device" in message
    assert rtnl.link_attr(replies[0], rtnl.IFLA_IFNAME) == b"lo\0"
    lo = json.loads(sh.run("ip", "-j", "link", "show", "lo", ns=inner).stdout)[0]
    assert "UP" in lo["flags"]   # the request after the refused one was still applied


def test_deleting_an_absent_link_is_accepted_only_when_asked(two_netns):
    inner, _ = two_netns

    def run() -> str:
        with rtnl.Rtnl() as nl:
            nl.run([rtnl.link_del("nothere")], ok_errors=frozenset({19}))   # ENODEV
            with pytest.raises(OSError) as refused:
                nl.run([rtnl.link_del("nothere")])
            return str(refused.value)
    assert "delete link nothere" in in_netns(inner, run)

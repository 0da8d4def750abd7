"""Allocation lifecycle on a real kernel: release, repair, scale."""
from __future__ import annotations

import _posixsubprocess
import asyncio
import contextlib
import json
import os
import subprocess
import time

import pytest

from netagent.agent import Agent
from netagent.errors import Conflict, Exhausted, InvalidArgument, NotFound
from netagent.firewall import nft as nft_mod
from tests.conftest import agent_config
from tests.datapath.helpers import conntrack_count, counter_packets, egress_ips, elements, table_elements
from tests.testbed import sh
from tests.testbed.bed import ECHO_PORT, HTTP_PORT, METADATA_IP, UPLINK_IP, WEB_IP, LightGuest, eventually


def slot_netns(bed) -> list[str]:
    return [n for n in sh.netns_list() if n.startswith(f"{bed.agent_prefix}-")]


def host_veths(bed) -> list[str]:
    return [n for n in sh.links(bed.host) if n.startswith(f"{bed.agent_prefix}v")]


async def test_release_leaves_no_netns_link_element_or_conntrack(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=0))
    await agent.start()
    try:
        net = await agent.allocate("rel-1")
        guest = LightGuest.attach(bed, net, "a")
        bed.start_server(guest.name, "--http", "8080")
        port = await agent.expose("rel-1", 8080)
        ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")
        assert ok, body
        ok, body = bed.fetch(bed.inet, f"http://{UPLINK_IP}:{port}/")
        assert ok, body
        mark = str(agent.plan.slot(net.slot).ct_mark)
        assert conntrack_count(bed.host, "-m", mark) > 0
        guest.stop()

        assert await agent.release("rel-1") is True
        assert await agent.release("rel-1") is False  # idempotent
        assert await eventually(lambda: conntrack_count(bed.host, "-m", mark) == 0, timeout=5)
        assert await eventually(lambda: not slot_netns(bed) and not host_veths(bed), timeout=10)
        t = bed.agent_prefix
        for name in ("egress_open", "egress_blocked", "port_dnat", "sbx_ifaces", "sbx_src", "slot_mark"):
            assert elements(bed.host, t, name) == [], name
        assert agent.slots == {} and agent.allocations == {}
        with pytest.raises(NotFound):
            await agent.get("rel-1")
    finally:
        await agent.stop()


async def test_released_slot_is_clean_for_the_next_sandbox(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=2))
    await agent.start(fill_pool=False)  # no refills: the released slot is the only warm one
    try:
        net = await agent.allocate("reuse-a")
        guest = LightGuest.attach(bed, net, "a")
        ok, _ = guest.fetch(f"tcp://{WEB_IP}:{ECHO_PORT}")
        assert ok
        guest.stop()
        mark = str(agent.plan.slot(net.slot).ct_mark)
        assert conntrack_count(bed.host, "-m", mark) > 0 and conntrack_count(net.netns) > 0
        await agent.release("reuse-a")
        assert await eventually(lambda: net.slot in agent.ready, timeout=5)  # cleaned, then warm again
        assert conntrack_count(net.netns) == 0 and conntrack_count(bed.host, "-m", mark) == 0
        again = await agent.allocate("reuse-b")
        assert again.slot == net.slot and again.sandbox_ip == net.sandbox_ip
    finally:
        await agent.stop()


async def test_nft_flush_ruleset_is_repaired(bed, agent):
    policy = {"internet": True, "allow_out": [f"{WEB_IP}:{ECHO_PORT}", "allowed.test"], "deny_out": ["203.0.113.0/24"]}
    net = await agent.allocate("flush-1", {"policy": policy})
    await agent.expose("flush-1", 8080)
    await agent.allocate("flush-2", {"policy": {"internet": False}})
    guest = LightGuest.attach(bed, net, "a")
    await agent.wait_pool_ready()  # no slot build may change the sets after the snapshot
    before = table_elements(bed.host, bed.agent_prefix)
    for name in ("uplinks", "always_deny", "sbx_ifaces", "sbx_src", "slot_mark", "slot_mark_in", "egress_open",
                 "allow_port", "deny_net", "dns_locked", "port_dnat"):
        assert before[name], f"{name} is empty: the snapshot would prove nothing about it"
    assert set(before) >= set(nft_mod.SETS + nft_mod.MAPS)

    sh.run("nft", "flush", "ruleset", ns=bed.host)
    flushed = time.monotonic()
    restored = await eventually(lambda: _table_exists(bed) and table_elements(bed.host, bed.agent_prefix) == before,
                                timeout=10, interval=0.05)
    took = time.monotonic() - flushed
    assert restored, f"not restored: {table_elements(bed.host, bed.agent_prefix)}"
    bound = 3 * agent.config.ruleset_check_interval_s
    assert took <= bound, f"restored after {took:.2f} s, more than 3 check intervals ({bound} s)"
    # The counter is bumped once the resync call returns, just after the kernel has it all.
    assert await eventually(lambda: agent.stats["ruleset_restores"] >= 1, timeout=1)

    # The rules work again: metadata is blocked (a silent drop, counted), a
    # deny_out entry bites, and allowed egress flows.
    counted = counter_packets(bed.host, bed.agent_prefix, "drop_always_deny")
    ok, body = guest.fetch(f"http://{METADATA_IP}:{HTTP_PORT}/", timeout=1)
    assert not ok and "timed out" in body, body
    assert counter_packets(bed.host, bed.agent_prefix, "drop_always_deny") > counted
    ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/", timeout=1)
    assert not ok, f"deny_out was not restored: {body}"
    ok, body = guest.fetch(f"tcp://{WEB_IP}:{ECHO_PORT}")
    assert ok, body


async def test_the_ruleset_watch_lists_the_table_only_after_a_foreign_commit(bed, agent):
    """Our own commits leave the watcher on the cheap generation read; a rule
    edited by someone else is still found and undone within 3 check intervals."""
    interval = agent.config.ruleset_check_interval_s
    await agent.allocate("gen-1", {"policy": {"internet": False}})
    await agent.wait_pool_ready()
    await asyncio.sleep(3 * interval)          # a check after the last build verifies the table
    listed = agent.keeper.listings
    for i in range(3):                          # element commits of ours, from the host and cleaner threads
        await agent.allocate(f"gen-x{i}", {})
        await agent.release(f"gen-x{i}")
    await agent.wait_pool_ready()
    await asyncio.sleep(4 * interval)
    assert agent.keeper.listings == listed, \
        f"the table was listed {agent.keeper.listings - listed} times after only our own commits"

    chain = ["nft", "list", "chain", "inet", bed.agent_prefix, "forward"]
    sh.run("nft", "insert", "rule", "inet", bed.agent_prefix, "forward", "counter", "comment", '"foreign"', ns=bed.host)
    edited = time.monotonic()
    undone = await eventually(lambda: "foreign" not in sh.run(*chain, ns=bed.host).stdout, timeout=10, interval=0.05)
    took = time.monotonic() - edited
    assert undone, "a foreign rule in the forward chain was never undone"
    assert took <= 3 * interval, f"undone after {took:.2f} s, more than 3 check intervals"
    assert agent.keeper.listings > listed


def _table_exists(bed) -> bool:
    return sh.run("nft", "list", "table", "inet", bed.agent_prefix, ns=bed.host, check=False).returncode == 0


async def test_calls_are_idempotent_and_bad_input_is_refused_without_side_effects(bed, agent):
    net = await agent.allocate("idem-1", {"labels": {"team": "a"}})
    assert await agent.allocate("idem-1", {"labels": {"team": "a"}}) == net
    with pytest.raises(Conflict):
        await agent.allocate("idem-1", {"labels": {"team": "b"}})
    before = (dict(agent.slots), len(egress_ips(bed.host, bed.agent_prefix)))
    for bad in ("", "UPPER", "a b", "x" * 58, "-lead", "trail-", "semi;colon", None, 7):
        with pytest.raises(InvalidArgument):
            await agent.allocate(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await agent.allocate("ok-id", {"internet": "maybe"})
    with pytest.raises(InvalidArgument):
        await agent.allocate("ok-id", {"bogus": 1})
    for port, proto in ((0, "tcp"), (70000, "tcp"), (80, "sctp"), ("80", "tcp")):
        with pytest.raises(InvalidArgument):
            await agent.expose("idem-1", port, proto)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await agent.expose("idem-1", 80, "tcp", host_port=22)  # outside the range
    with pytest.raises(NotFound):
        await agent.expose("nobody", 80)
    assert (dict(agent.slots), len(egress_ips(bed.host, bed.agent_prefix))) == before

    p = await agent.expose("idem-1", 80)
    assert await agent.expose("idem-1", 80) == p
    with pytest.raises(Conflict):
        await agent.expose("idem-1", 80, host_port=p + 1 if p < agent.config.host_port_range[1] else p - 1)
    await agent.allocate("idem-2")
    with pytest.raises(Conflict):
        await agent.expose("idem-2", 81, host_port=p)
    assert net.boot_ip_arg == "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off:169.254.0.22"
    assert [n.sandbox_id for n in await agent.list({"team": "a"})] == ["idem-1"]


async def test_concurrent_burst_is_one_transaction_and_retries_coalesce(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=50, pool_build_concurrency=4))
    await agent.start()
    try:
        await agent.wait_pool_ready(timeout=60)
        commits = agent.stats.get("commits", 0)
        ids = [f"burst-{i}" for i in range(50)]
        nets = await asyncio.gather(*(agent.allocate(i) for i in ids), *(agent.allocate(i) for i in ids[:10]))
        assert agent.stats["commits"] - commits <= 2, "a burst must coalesce into one or two transactions"
        assert len({n.sandbox_ip for n in nets[:50]}) == 50
        assert nets[50:] == nets[:10]  # concurrent retries got the same network
        assert len(egress_ips(bed.host, bed.agent_prefix)) == 50
    finally:
        await agent.stop()


async def test_host_ports_and_slots_exhaust_with_clear_errors(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=1, transit_cidr="10.13.0.0/30",
                               host_port_range=(20000, 20001)))
    await agent.start()
    try:
        await agent.allocate("cap-1")
        await agent.allocate("cap-2")
        with pytest.raises(Exhausted, match="slots"):
            await agent.allocate("cap-3")
        await agent.expose("cap-1", 1)
        await agent.expose("cap-1", 2)
        with pytest.raises(Exhausted, match="host port"):
            await agent.expose("cap-1", 3)
    finally:
        await agent.stop()


async def test_200_slots_allocate_and_release_cleanly(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=0, pool_build_concurrency=4))
    await agent.start()
    try:
        ids = [f"scale-{i}" for i in range(200)]
        nets = await asyncio.gather(*(agent.allocate(i) for i in ids))
        assert len({n.sandbox_ip for n in nets}) == 200
        assert len(slot_netns(bed)) == 200 and len(host_veths(bed)) == 200
        assert len(egress_ips(bed.host, bed.agent_prefix)) == 200
        assert all(await asyncio.gather(*(agent.release(i) for i in ids)))
        assert await eventually(lambda: not slot_netns(bed) and not host_veths(bed), timeout=60)
        assert elements(bed.host, bed.agent_prefix, "sbx_ifaces") == []
        assert egress_ips(bed.host, bed.agent_prefix) == []
    finally:
        await agent.stop()


_PROCESS_MAKERS = [(subprocess.Popen, "_execute_child"), (_posixsubprocess, "fork_exec"), (os, "fork"),
                   (os, "forkpty"), (os, "posix_spawn"), (os, "posix_spawnp"), (os, "system"), (os, "execv"),
                   (os, "execve")]


@contextlib.contextmanager
def no_new_processes():
    """Every way Python makes a process raises (and is recorded, in case a
    caller swallows the error) until the block ends."""
    calls: list[str] = []
    saved = [(owner, name, getattr(owner, name)) for owner, name in _PROCESS_MAKERS]

    def refuse(name: str):  # type: ignore[no-untyped-def]
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append(f"{name}{args[:2]!r}")
            raise AssertionError(f"{name} called on the slot path")
        return call
    for owner, name, _ in saved:
        setattr(owner, name, refuse(name))
    try:
        yield calls
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


async def test_no_subprocess_on_the_slot_path(bed, tmp_path):
    """Slots are built and destroyed with netlink and libnftables only: no
    `ip`/`nft` process, no fork, while a real slot is built, allocated,
    released and torn down."""
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=0))
    await agent.start()
    try:
        with no_new_processes() as calls:
            net = await agent.allocate("nofork-1")  # an empty pool: the slot is built for this call
            assert os.path.exists(f"/run/netns/{net.netns}")
            await agent.release("nofork-1")         # pool_size 0: the slot is destroyed
            gone = await eventually(lambda: not os.path.exists(f"/run/netns/{net.netns}") and not agent.slots,
                                    timeout=10)
        assert not calls, calls
        assert gone, "the slot was not destroyed"
        # Control: the guard does catch a process made the usual way.
        with no_new_processes() as calls, pytest.raises(AssertionError):
            subprocess.run(["true"])
        assert calls
    finally:
        await agent.stop()


async def test_a_leftover_element_is_removed_before_the_slot_is_reused(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=4, pool_refill_delay_s=1.0))
    await agent.start()
    try:
        await agent.wait_pool_ready()
        net = await agent.allocate("left-1")
        await agent.release("left-1")
        # Someone (or a bug) puts the egress element back while the slot is dirty.
        sh.run("nft", "add", "element", "inet", bed.agent_prefix, "egress_open",
               f"{{ {net.sandbox_ip} }}", ns=bed.host)
        assert net.slot not in agent.ready
        assert await eventually(lambda: net.slot in agent.ready or net.slot not in agent.slots, timeout=10)
        assert egress_ips(bed.host, bed.agent_prefix) == []
    finally:
        await agent.stop()


async def test_changed_slot_rules_are_reloaded_into_adopted_slots_without_breaking_flows(bed, tmp_path):
    state = tmp_path / "state"
    first = Agent(agent_config(bed, state, pool_size=2))
    await first.start()
    net = await first.allocate("up-1")
    await first.stop()
    guest = LightGuest.attach(bed, net, "a")
    # An upgrade that changed rules/slot.nft looks like this to the next start.
    from netagent.state import StateStore
    store = StateStore(state)
    store.set_meta("slot_rules_fingerprint", "from-an-older-version")
    store.close()
    sh.run("nft", "delete", "table", "ip", "netagent_slot", ns=net.netns)  # and the old tables differ
    second = Agent(agent_config(bed, state, pool_size=2))
    await second.start()
    try:
        assert second.stats["last_reconcile"]["slot_rules_reloaded"] >= 1
        ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")
        assert ok, body
    finally:
        await second.stop()
    # Unchanged rules: nothing is reloaded on the next start.
    third = Agent(agent_config(bed, state, pool_size=2))
    await third.start()
    try:
        assert third.stats["last_reconcile"]["slot_rules_reloaded"] == 0
    finally:
        await third.stop()


async def test_slot_links_carry_no_ipv6_addresses(bed, agent):
    """Neither side of a slot gets an IPv6 (link-local) address: nothing to
    reach over IPv6 and no neighbour-discovery chatter on idle slots."""
    net = await agent.allocate("v6-1")
    host = json.loads(sh.run("ip", "-j", "-6", "addr", "show", "dev", net.host_veth, ns=bed.host).stdout)
    assert all(not link.get("addr_info") for link in host), host
    inside = json.loads(sh.run("ip", "-j", "-6", "addr", "show", ns=net.netns).stdout)
    assert all(not link.get("addr_info") for link in inside if link["ifname"] != "lo"), inside

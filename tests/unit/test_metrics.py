"""Metrics: names, parsing, counters, opt-in per-sandbox labels, real veth counters."""
from __future__ import annotations

import os
import socket
import subprocess
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netagent import netns
from netagent.datapath import link_counters
from netagent.metrics import Metrics
from netagent.models import SlotState

HISTOGRAMS = ["netagent_allocate_duration_seconds", "netagent_slot_build_duration_seconds",
              "netagent_release_duration_seconds", "netagent_nft_transaction_duration_seconds",
              "netagent_reconcile_duration_seconds"]
GAUGES = ["netagent_slots", "netagent_pool_ready_slots", "netagent_allocations", "netagent_slot_capacity"]
COUNTERS = ["netagent_errors_total", "netagent_reconcile_repairs_total", "netagent_ruleset_restores_total",
            "netagent_sandboxes_rx_bytes_total", "netagent_sandboxes_tx_bytes_total"]
PER_SANDBOX = ["netagent_sandbox_rx_bytes_total", "netagent_sandbox_tx_bytes_total"]


def samples(m: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, frozenset(labels.items())))


def names(m: Metrics) -> set[str]:
    return {name for name, _ in samples(m)}


def links(**counters: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """A link dump: veth name -> (rx_bytes, tx_bytes) as the host sees them."""
    return dict(counters)


def test_every_metric_is_rendered_and_parses():
    m = Metrics()
    m.observe_allocate(0.0004, warm=True)
    m.observe_allocate(0.8, warm=False)
    m.observe_slot_build(0.05)
    m.observe_release(0.001)
    m.observe_nft(0.0002)
    m.observe_reconcile(1.5)
    m.error("allocate", "RESOURCE_EXHAUSTED")
    m.set_state({"ready": 3, "allocated": 2}, ready=3, allocations=2, capacity=32768)
    got = names(m)
    for h in HISTOGRAMS:
        assert {h + "_bucket", h + "_count", h + "_sum"} <= got, h
    for name in GAUGES + COUNTERS:
        assert name in got, name
    text = m.render().decode()
    for name in HISTOGRAMS + GAUGES + COUNTERS:
        assert f"# TYPE {name} " in text, name
    assert value(m, "netagent_allocate_duration_seconds_count", path="warm") == 1
    assert value(m, "netagent_allocate_duration_seconds_count", path="cold") == 1
    assert value(m, "netagent_allocate_duration_seconds_bucket", path="warm", le="0.0005") == 1
    assert value(m, "netagent_allocate_duration_seconds_bucket", path="warm", le="0.0001") == 0
    assert value(m, "netagent_reconcile_duration_seconds_bucket", le="10.0") == 1


def test_counters_and_gauges_move():
    m = Metrics()
    assert value(m, "netagent_ruleset_restores_total") == 0
    m.error("allocate", "UNAVAILABLE")
    m.error("allocate", "UNAVAILABLE")
    m.error("release", "NOT_FOUND")
    m.reconcile_repairs(3)
    m.reconcile_repairs(0)
    m.ruleset_restored()
    assert value(m, "netagent_errors_total", operation="allocate", code="UNAVAILABLE") == 2
    assert value(m, "netagent_errors_total", operation="release", code="NOT_FOUND") == 1
    assert value(m, "netagent_reconcile_repairs_total") == 3
    assert value(m, "netagent_ruleset_restores_total") == 1

    m.set_state({"building": 1, "ready": 4, "allocated": 7, "dirty": 2}, ready=4, allocations=7, capacity=128)
    assert value(m, "netagent_slots", state="ready") == 4
    assert value(m, "netagent_slots", state="destroying") == 0
    m.set_state({"ready": 1}, ready=1, allocations=0, capacity=128)
    assert value(m, "netagent_slots", state="allocated") == 0   # states missing from the dict drop to 0
    assert value(m, "netagent_pool_ready_slots") == 1
    assert value(m, "netagent_allocations") == 0
    assert value(m, "netagent_slot_capacity") == 128
    m.set_state(Counter([SlotState.READY, SlotState.READY, SlotState.DIRTY]), ready=2, allocations=0, capacity=128)
    assert value(m, "netagent_slots", state="ready") == 2   # SlotState keys work too
    assert value(m, "netagent_slots", state="dirty") == 1


def test_each_instance_has_its_own_registry():
    a, b = Metrics(), Metrics()
    a.ruleset_restored()
    assert value(a, "netagent_ruleset_restores_total") == 1
    assert value(b, "netagent_ruleset_restores_total") == 0


def test_per_sandbox_labels_are_opt_in():
    off, on = Metrics(), Metrics(per_sandbox_labels=True)
    for m in (off, on):
        m.refresh_link_stats(links(nav0=(100, 100)), {}, ready_veths=["nav0"])
        m.refresh_link_stats(links(nav0=(1100, 600)), {"sbx-a": "nav0"})
    assert "sandbox_id" not in off.render().decode()
    assert not set(PER_SANDBOX) & names(off)
    assert value(off, "netagent_sandboxes_tx_bytes_total") == 1000
    assert value(on, "netagent_sandbox_tx_bytes_total", sandbox_id="sbx-a") == 1000
    assert value(on, "netagent_sandbox_rx_bytes_total", sandbox_id="sbx-a") == 500
    assert value(on, "netagent_sandboxes_rx_bytes_total") == 500


def test_traffic_counters_follow_tenants_and_stay_monotonic():
    m = Metrics(per_sandbox_labels=True)

    def refresh(veths: dict[str, str], ready: tuple[str, ...] = (), **counters: tuple[int, int]) -> None:
        m.refresh_link_stats(links(**counters), veths, ready_veths=ready)

    # A slot that was never seen idle: its first tenant counts from its first refresh.
    refresh({"old": "nav1"}, nav1=(5000, 5000))
    assert value(m, "netagent_sandbox_tx_bytes_total", sandbox_id="old") == 0
    refresh({"old": "nav1"}, nav1=(5300, 5100))
    assert value(m, "netagent_sandbox_tx_bytes_total", sandbox_id="old") == 300   # host veth rx = sandbox tx
    assert value(m, "netagent_sandbox_rx_bytes_total", sandbox_id="old") == 100
    # Released: gone from the per-sandbox series, still in the host-wide sums; nav1 goes back to the pool.
    refresh({}, ("nav1",), nav1=(5400, 5100))
    assert value(m, "netagent_sandbox_tx_bytes_total", sandbox_id="old") is None
    assert value(m, "netagent_sandboxes_tx_bytes_total") == 300
    # The next tenant of the same veth never inherits the previous tenant's bytes.
    refresh({"new": "nav1"}, nav1=(5450, 5120))
    assert value(m, "netagent_sandbox_tx_bytes_total", sandbox_id="new") == 50
    assert value(m, "netagent_sandbox_rx_bytes_total", sandbox_id="new") == 20
    # The veth was recreated (reconcile rebuilt the slot): its counters restart from 0.
    refresh({"new": "nav1"}, nav1=(30, 10))
    assert value(m, "netagent_sandbox_tx_bytes_total", sandbox_id="new") == 80
    assert value(m, "netagent_sandboxes_tx_bytes_total") == 380
    assert value(m, "netagent_sandboxes_rx_bytes_total") == 130
    assert value(m, "netagent_link_stats_refresh_timestamp_seconds") > 0


def test_http_endpoint_serves_the_registry(monkeypatch):
    def no_dns(*_a, **_k):
        raise AssertionError("getfqdn() must not be called")
    monkeypatch.setattr(socket, "getfqdn", no_dns)
    m = Metrics()
    m.ruleset_restored()
    port = m.start_http("127.0.0.1", 0)
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            body = resp.read().decode()
        assert "netagent_ruleset_restores_total 1.0" in body
    finally:
        m.stop_http()


# ---- real veth counters in namespaces this test creates ----------------------

def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def veth_between_two_netns():
    """host-side netns H with veth 'nmxh' (10.250.0.0/31) <-> sandbox-side netns S ('nmxs', .1)."""
    if os.geteuid() != 0:
        pytest.fail("needs root to create network namespaces", pytrace=False)
    tag = os.getpid() % 100000
    host, sbx = f"nmx{tag}h", f"nmx{tag}s"
    try:
        for ns in (host, sbx):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            # no IPv6: its DAD, router solicitations and MLD reports after link-up
            # would move the counters between two readings at unpredictable times
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        _ip("-n", host, "link", "add", "nmxh", "type", "veth", "peer", "name", "nmxs")
        _ip("-n", host, "link", "set", "nmxs", "netns", sbx)
        _ip("-n", host, "addr", "add", "10.250.0.0/31", "dev", "nmxh")
        _ip("-n", sbx, "addr", "add", "10.250.0.1/31", "dev", "nmxs")
        _ip("-n", host, "link", "set", "nmxh", "up")
        _ip("-n", sbx, "link", "set", "nmxs", "up")
        yield host, sbx
    finally:
        for ns in (host, sbx):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _udp_socket_in(ns: str, bind: tuple[str, int]) -> socket.socket:
    def make() -> socket.socket:
        with netns.entered(netns.path_of(ns)):   # the socket stays in the netns it was created in
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(bind)
            s.settimeout(5)
            return s
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(make).result()


def _counters_in(ns: str) -> dict[str, tuple[int, int]]:
    def dump() -> dict[str, tuple[int, int]]:
        with netns.entered(netns.path_of(ns)):
            return link_counters.dump()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(dump).result()


def test_refresh_link_stats_reads_real_veth_counters(veth_between_two_netns):
    host, sbx = veth_between_two_netns
    m = Metrics(per_sandbox_labels=True)
    server = _udp_socket_in(host, ("10.250.0.0", 0))
    client = _udp_socket_in(sbx, ("10.250.0.1", 0))
    try:
        m.refresh_link_stats(_counters_in(host), {}, ready_veths=["nmxh"])   # warm slot: the baseline
        payload = b"x" * 1000
        for _ in range(5):   # sandbox -> host, and a reply back
            client.sendto(payload, server.getsockname())
            data, peer = server.recvfrom(2000)
            server.sendto(data[:400], peer)
            assert client.recv(2000) == payload[:400]
        m.refresh_link_stats(_counters_in(host), {"sbx-real": "nmxh"})
    finally:
        server.close()
        client.close()
    sent = value(m, "netagent_sandbox_tx_bytes_total", sandbox_id="sbx-real")
    received = value(m, "netagent_sandbox_rx_bytes_total", sandbox_id="sbx-real")
    assert sent is not None and sent >= 5 * 1000
    assert received is not None and 5 * 400 <= received < sent
    assert value(m, "netagent_sandboxes_tx_bytes_total") == sent
    assert value(m, "netagent_sandboxes_rx_bytes_total") == received


def test_link_counters_from_the_stats_dump_match_the_link_dump(veth_between_two_netns):
    """What the agent's refresh reads (RTM_GETSTATS, names kept by index) is
    what a link dump says; names are dumped again only for a new link."""
    host, sbx = veth_between_two_netns
    reader = link_counters.LinkCounters()

    def both() -> tuple[dict, dict]:
        with netns.entered(netns.path_of(host)):
            return reader.read(), link_counters.dump()
    server = _udp_socket_in(host, ("10.250.0.0", 0))
    client = _udp_socket_in(sbx, ("10.250.0.1", 0))
    try:
        for _ in range(3):
            client.sendto(b"x" * 700, server.getsockname())
            server.recvfrom(2000)
    finally:
        server.close()
        client.close()
    with ThreadPoolExecutor(1) as pool:
        stats, links = pool.submit(both).result()
        assert stats == links and stats["nmxh"][0] >= 3 * 700 and reader.name_dumps == 1
        stats, _ = pool.submit(both).result()
        assert reader.name_dumps == 1, "names dumped again with no new link"
        _ip("-n", host, "link", "add", "nmxn", "type", "veth", "peer", "name", "nmxm")
        stats, links = pool.submit(both).result()
        assert reader.name_dumps == 2 and "nmxn" in stats and stats == links

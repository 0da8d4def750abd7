"""The daemon as a service: restarts without loss, metrics, mTLS, SIGHUP."""
from __future__ import annotations

import json
import re
import signal

import grpc
import pytest

from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, WEB_IP, LightGuest, wait_until
from tests.testbed.flows import STREAM_READER
from tests.testbed.tls import issue, make_ca


def test_sigterm_and_sigkill_restarts_lose_nothing(bed, tmp_path):
    cfg = write_config(bed, tmp_path, pool_size=4)
    daemon = Daemon(cfg).start()
    with daemon.client() as c:
        sandboxes = {f"live-{i}": c.allocate(f"live-{i}") for i in range(50)}
        ports = {sid: c.expose(sid, 8080).host_port for sid in list(sandboxes)[:10]}
    guest = LightGuest.attach(bed, sandboxes["live-0"].network, "a")
    seconds = 14
    stream = sh.popen(sh.PYTHON, "-c", STREAM_READER, f"http://{WEB_IP}:{HTTP_PORT}/stream?seconds={seconds}",
                      ns=guest.name)
    ping = sh.popen("ping", "-i", "0.01", "-c", str(seconds * 100 - 200), "-W", "1", WEB_IP, ns=guest.name)
    # Both flows are up before the first stop: the download is established and a ping came back.
    assert wait_until(lambda: sh.run("ss", "-Htn", "state", "established", "dst", f"{WEB_IP}:{HTTP_PORT}",
                                     ns=guest.name).stdout.strip(), timeout=10), "the download never connected"
    assert ping.stdout.readline().startswith("PING") and " bytes from " in ping.stdout.readline()

    assert daemon.stop(signal.SIGTERM) == 0
    daemon = Daemon(cfg).start()
    # SIGKILL once the restarted daemon is in its steady state: every sandbox adopted, the pool full.
    with daemon.client() as c:
        assert wait_until(lambda: (i := c.host_info()).allocations == 50 and i.ready_slots == 4, timeout=10)
    daemon.stop(signal.SIGKILL)
    daemon = Daemon(cfg).start()
    try:
        ping_out, _ = ping.communicate(timeout=60)
        stream_out, stream_err = stream.communicate(timeout=60)
        sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", ping_out).groups())
        assert sent >= 1000 and received == sent, ping_out.splitlines()[-2:]
        assert stream.returncode == 0, stream_err
        flow = json.loads(stream_out)
        assert flow["chunks"] >= seconds * 15 and flow["max_gap_s"] < 1.0, flow
        with daemon.client() as c:
            for sid, sbx in sandboxes.items():
                assert c.get(sid).network.sandbox_ip == sbx.network.sandbox_ip
            got = {s.sandbox_id: {p.guest_port: p.host_port for p in s.ports} for s in c.list()}
            assert len(got) == 50
            for sid, port in ports.items():
                assert got[sid] == {8080: port}
    finally:
        daemon.stop()


SEND_SPOOFED = r"""
import sys
from scapy.all import IP, TCP, Ether, conf, sendp
conf.verb = 0
sendp(Ether(dst=sys.argv[1]) / IP(src="192.0.2.99", dst=sys.argv[2]) / TCP(dport=80, flags="S"), iface="veth0", count=5)
"""


def test_metrics_parse_and_move(bed, daemon):
    def scrape() -> dict[str, float]:
        return daemon.metrics(bed.host)

    before = scrape()
    with daemon.client() as c:
        net = c.allocate("m-1").network
        # 5 frames with a source that is not the slot's sandbox IP, sent from the slot netns out its veth:
        # the host's anti-spoofing rule drops them and the spoof drop counter must count them.
        host_mac = json.loads(sh.run("ip", "-j", "link", "show", net.host_veth, ns=bed.host).stdout)[0]["address"]
        sh.run(sh.PYTHON, "-c", SEND_SPOOFED, host_mac, WEB_IP, ns=net.netns)
        c.expose("m-1", 3000)   # no guest: probed, unreachable, written to the default sqlite registry
        assert wait_until(lambda: c.get("m-1").ports[0].HasField("reachable"), timeout=5), "never probed"
        assert c.get("m-1").ports[0].reachable is False
        c.release("m-1")
        with pytest.raises(grpc.RpcError):
            c.get("nobody")
    # Registry writes happen in the background, gauges refresh every metrics_refresh_s: poll.
    release, writes = "netagent_release_duration_seconds_count{}", "netagent_registry_writes_total{}"
    spoof = 'netagent_dropped_packets_total{"reason": "spoof"}'
    assert wait_until(lambda: (m := scrape()).get(release, 0) > before.get(release, 0) and m[writes] > before[writes]
                      and m[spoof] > before[spoof], timeout=5)
    after = scrape()
    warm = 'netagent_allocate_duration_seconds_count{"path": "warm"}'
    assert after[warm] == before.get(warm, 0) + 1
    assert after["netagent_release_duration_seconds_count{}"] >= 1
    nft = "netagent_nft_transaction_duration_seconds_count{}"
    assert after[nft] > before[nft]
    assert after['netagent_errors_total{"code": "NOT_FOUND", "operation": "get"}'] == 1
    assert after["netagent_reconcile_duration_seconds_count{}"] == 1
    assert after['netagent_slots{"state": "ready"}'] >= 1
    assert after["netagent_slot_capacity{}"] == 32768
    assert after[spoof] == before[spoof] + 5
    assert after["netagent_probes_total{}"] > before["netagent_probes_total{}"]
    assert after["netagent_reachability_changes_total{}"] >= 1   # unknown -> unreachable
    assert after["netagent_registry_up{}"] == 1
    assert after["netagent_registry_writes_total{}"] > before["netagent_registry_writes_total{}"]
    assert after["netagent_registry_errors_total{}"] == 0


def make_pki(d) -> None:
    make_ca(d)
    issue(d, "server", "IP:127.0.0.1")
    issue(d, "client", "DNS:client")


_TLS_CLIENT = r"""
import sys
from pathlib import Path
import grpc
from netagent.client import Client, TlsFiles
d = Path(sys.argv[2])
tls = TlsFiles(ca=d / "ca.crt")
if sys.argv[3] == "cert":
    tls = TlsFiles(ca=d / "ca.crt", cert=d / "client.crt", key=d / "client.key")
try:
    print(Client(sys.argv[1], tls=tls, timeout=5).host_info().node_id)
except grpc.RpcError as e:
    print("refused", e.code())
"""


def test_mtls_refuses_a_client_without_a_certificate(bed, tmp_path):
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    cfg = write_config(bed, tmp_path, api_tcp_address="127.0.0.1:50443", tls_cert=str(pki / "server.crt"),
                       tls_key=str(pki / "server.key"), tls_ca=str(pki / "ca.crt"))
    daemon = Daemon(cfg).start()
    try:
        ok = sh.run(sh.PYTHON, "-c", _TLS_CLIENT, "127.0.0.1:50443", str(pki), "cert", ns=bed.host).stdout
        assert ok.strip() == "test-node"
        refused = sh.run(sh.PYTHON, "-c", _TLS_CLIENT, "127.0.0.1:50443", str(pki), "none", ns=bed.host).stdout
        assert refused.startswith("refused StatusCode.UNAVAILABLE"), refused
    finally:
        daemon.stop()


def test_sighup_reloads_pool_size_and_defaults(bed, tmp_path):
    cfg = write_config(bed, tmp_path, pool_size=2)
    daemon = Daemon(cfg).start()
    try:
        with daemon.client() as c:
            assert c.host_info().ready_slots == 2
            assert c.allocate("hup-1").policy.internet is True
            text = cfg.read_text().replace("pool_size = 2", "pool_size = 5")
            cfg.write_text(text.replace("pool_max_size = 2", "pool_max_size = 8") + "default_internet = false\n")
            daemon.signal(signal.SIGHUP)
            # size 5 plus the allocation in the demand window: max_size (8) is reloaded too
            assert wait_until(lambda: c.host_info().ready_slots == 6, timeout=10)
            assert c.allocate("hup-2").policy.internet is False
            assert c.get("hup-1").policy.internet is True  # running sandboxes keep their policy
            assert wait_until(lambda: c.host_info().ready_slots == 7, timeout=10)
    finally:
        daemon.stop()

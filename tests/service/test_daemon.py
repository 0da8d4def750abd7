"""The daemon as a service: restarts without loss, metrics, mTLS, SIGHUP."""
from __future__ import annotations

import json
import re
import signal
import time

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, WEB_IP, LightGuest
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
    time.sleep(1.5)

    assert daemon.stop(signal.SIGTERM) == 0
    daemon = Daemon(cfg).start()
    time.sleep(1.5)
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


def _fetch_in(ns: str, url: str) -> str:
    code = "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    return sh.run(sh.PYTHON, "-c", code, url, ns=ns).stdout


def test_metrics_parse_and_move(bed, daemon):
    port = int(re.search(r"metrics_port=(\d+)", "".join(daemon.log)).group(1))
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> dict[str, float]:
        out = {}
        for family in text_string_to_metric_families(_fetch_in(bed.host, url)):
            for sample in family.samples:
                key = sample.name + json.dumps(sample.labels, sort_keys=True)
                out[key] = sample.value
        return out

    before = scrape()
    with daemon.client() as c:
        c.allocate("m-1")
        c.expose("m-1", 3000)   # no guest: probed, unreachable, written to the default sqlite registry
        time.sleep(0.8)          # > probe_timeout_s: the first probe has timed out
        c.release("m-1")
        with pytest.raises(grpc.RpcError):
            c.get("nobody")
    time.sleep(1.2)
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
    assert 'netagent_dropped_packets_total{"reason": "spoof"}' in after
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
            cfg.write_text(cfg.read_text().replace("pool_size = 2", "pool_size = 5") + "default_internet = false\n")
            daemon.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while c.host_info().ready_slots < 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert c.host_info().ready_slots == 5
            assert c.allocate("hup-2").policy.internet is False
            assert c.get("hup-1").policy.internet is True  # running sandboxes keep their policy
    finally:
        daemon.stop()

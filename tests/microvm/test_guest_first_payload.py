"""The first-payload check from a real guest kernel: a QEMU guest with a
domain allowlist fetches an allowed name and is refused for a disallowed one
on the same address, by TLS SNI (busybox wget's own TLS) and by HTTP Host.

busybox wget's ClientHello has no signature_algorithms extension; the test
server accepts that (tests/testbed/tls_server.py), as many real servers do."""
from __future__ import annotations

import json
import subprocess

import grpc
import pytest

from netagent.api import netagent_pb2 as pb
from tests.datapath.test_first_payload import NAMES
from tests.microvm.test_e2e import boot, wget
from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import WEB_IP

pytestmark = pytest.mark.microvm


@pytest.fixture
def tls_bed(bed, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=allowed.test", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in NAMES)],
                   check=True, capture_output=True)
    bed.start_module(bed.inet, "tests.testbed.tls_server", WEB_IP, str(cert), str(key))
    return bed


def denied_reasons(client, sandbox_id: str, want: set[str]) -> set[str]:
    """FLOW_DENIED reasons of the sandbox, read until `want` is seen or 10 s pass."""
    seen: set[str] = set()
    try:
        for ev in client.watch_events(0, [sandbox_id], timeout=10):
            if ev.type == pb.EVENT_TYPE_FLOW_DENIED:
                seen.add(ev.denied.reason)
                if want <= seen:
                    break
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    return seen


def test_a_guest_fetches_an_allowed_name_and_is_refused_for_another_on_the_same_address(tls_bed, tmp_path):
    bed = tls_bed
    cfg = write_config(bed, tmp_path, pool_size=0, dns_ttl_floor_s=60)
    cfg.write_text(cfg.read_text() + "\n[first_payload]\nverdict_events_s = 0.2\n")
    daemon = Daemon(cfg).start()
    vm = None
    try:
        with daemon.client() as c:
            sbx = c.allocate("fp-vm", internet=False, allow_out=["allowed.test"])
            vm = boot(sbx)
            # TLS: the ClientHello names allowed.test; busybox does ECDHE in software under TCG, hence 30 s.
            res = wget(vm, "https://allowed.test/", 30)
            assert res.exit_code == 0 and "served sni=allowed.test host=allowed.test" in res.output, res.output
            # The same address under another name (a hosts entry, as DNS refuses other.test): SNI other.test
            # is refused with a reset, so wget fails at once instead of hanging.
            assert vm.run(f"echo '{WEB_IP} other.test' >> /etc/hosts").exit_code == 0
            res = wget(vm, "https://other.test/", 30)
            assert res.exit_code != 0 and "reset by peer" in res.output and "served" not in res.output, res.output
            assert "sni" in denied_reasons(c, "fp-vm", {"sni"})
            # HTTP: the Host header, allowed and then another name on the same address.
            res = wget(vm, "http://allowed.test/")
            assert res.exit_code == 0 and "served host=allowed.test" in res.output, res.output
            res = wget(vm, "--header 'Host: other.test' http://allowed.test/")
            assert res.exit_code != 0 and "reset by peer" in res.output and "served" not in res.output, res.output
            assert "host" in denied_reasons(c, "fp-vm", {"host"})
            # netagent top: the verdicts per destination and check (from FIRST_PAYLOAD_VERDICTS events)
            top = json.loads(sh.run(sh.PYTHON, "-m", "netagent", "top", "--once", "--interval", "0.5", "--json",
                                    "--config", str(cfg), timeout=60).stdout)
            [row] = [r for r in top if r["sandbox"] == "fp-vm"]
            verdicts = sorted(row["firstPayloadVerdicts"], key=lambda v: v["check"])
            assert verdicts == [{"sandbox": "fp-vm", "destination": WEB_IP, "check": check, "allowed": 1, "refused": 1}
                                for check in ("host", "sni")], row
    finally:
        if vm:
            vm.stop()
        daemon.stop()

"""The first-payload check from a real guest kernel: a QEMU guest with a
domain allowlist fetches an allowed name and is refused for a disallowed one
on the same address.

By HTTP Host, not TLS SNI: the guest is busybox, whose wget speaks TLS, but
its HTTPS fetch from the TCG guest fails against the test bed's server with
the check switched off too ("got bad TLS record (len:0)", then a reset; the
same binary works from a light guest), so TLS is covered by the light-guest
tests (tests/datapath/test_first_payload.py) and this test uses plain HTTP."""
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
            res = wget(vm, "http://allowed.test/")
            assert res.exit_code == 0 and "served host=allowed.test" in res.output, res.output
            # The same address, another name: refused with a reset (wget fails at once, no hang).
            res = wget(vm, "--header 'Host: other.test' http://allowed.test/")
            assert res.exit_code != 0 and "reset by peer" in res.output and "served" not in res.output, res.output
            assert "host" in denied_reasons(c, "fp-vm", {"host"})
            # netagent top: the verdicts per destination (from FIRST_PAYLOAD_VERDICTS events)
            top = json.loads(sh.run(sh.PYTHON, "-m", "netagent", "top", "--once", "--interval", "0.5", "--json",
                                    "--config", str(cfg), timeout=60).stdout)
            [row] = [r for r in top if r["sandbox"] == "fp-vm"]
            assert row["firstPayloadVerdicts"] == [{"sandbox": "fp-vm", "destination": WEB_IP, "check": "host",
                                                    "allowed": 1, "refused": 1}], row
    finally:
        if vm:
            vm.stop()
        daemon.stop()

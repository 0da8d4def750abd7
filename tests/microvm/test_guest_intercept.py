"""Request interception from a real guest kernel (issue 23, "done when"): a QEMU
guest resolves api.test through the agent and calls https://api.test/; the
upstream in the internet netns receives the injected Authorization header; the
guest and the agent's files hold nothing of the value.

busybox wget is the guest's only HTTPS client: it does not verify certificates
at all (so "the host CA installed" cannot be shown with it) and its TLS 1.2
sends no signature_algorithms, so the interceptor runs with
[intercept] legacy_guest_tls here."""
from __future__ import annotations

import json

import pytest

from tests.intercept.bed import read_tree
from tests.microvm.test_e2e import boot, wget
from tests.service.daemon import Daemon, write_config
from tests.testbed import sh, tls

pytestmark = pytest.mark.microvm

API_IP = "203.0.113.13"    # api.test in tests/testbed/dns_server.py
SECRET = "sk-vm-77aa88bb99cc-never-in-the-guest"


def test_a_guest_calls_api_test_and_the_upstream_gets_the_injected_header(bed, tmp_path):
    up = tmp_path / "upstream"
    up.mkdir()
    ca = tls.make_ca(up, "upstream-ca")
    crt, key = tls.issue(up, "api", "DNS:api.test")
    sh.ip("addr", "add", f"{API_IP}/32", "dev", "lo", ns=bed.inet)
    log = up / "requests.jsonl"
    bed.start_module(bed.inet, "tests.testbed.echo_upstream", API_IP, str(crt), str(key), str(log))
    cfg = write_config(bed, tmp_path, pool_size=0, intercept={
        "run_dir": str(tmp_path / "intercept-run"), "ca_bundle": str(ca), "legacy_guest_tls": True})
    daemon = Daemon(cfg).start()
    vm = None
    try:
        with daemon.client() as c:
            c.set_secret("ic-vm", "API_KEY", SECRET)
            sbx = c.allocate("ic-vm", request_rules=[{"id": "auth", "domain": "api.test", "transforms": [
                {"op": "set", "header": "Authorization", "value": "Bearer ${secret:API_KEY}"}]}])
            vm = boot(sbx)
            res = wget(vm, "https://api.test/quiet/v1", 60)   # busybox does ECDHE in software under TCG
            assert res.exit_code == 0 and res.output.strip().endswith("ok"), res.output
            (seen,) = [json.loads(line) for line in log.read_text().splitlines()]
            assert seen["sni"] == "api.test"
            assert [v for k, v in seen["headers"] if k.lower() == "authorization"] == [f"Bearer {SECRET}"]
            found = vm.run(f"grep -rl '{SECRET}' /etc /tmp /root /bin 2>/dev/null; echo done", timeout=60)
            assert found.output.strip().endswith("done") and SECRET not in found.output.replace(
                f"grep -rl '{SECRET}'", "")
        assert SECRET.encode() not in read_tree(tmp_path / "state") + read_tree(tmp_path / "intercept-run")
        assert SECRET not in "".join(daemon.log)
    finally:
        if vm is not None:
            vm.stop()
        daemon.stop()

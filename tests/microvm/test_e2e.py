"""End to end with real guest kernels: two concurrent microVMs on agent slots.

The agent runs as a daemon in the test bed and is driven over gRPC; each VM is
QEMU (or Firecracker with NETAGENT_VM_BACKEND=firecracker) on the slot's tap,
configured only by the `ip=` argument the agent returned.
"""
from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.datapath.helpers import elements
from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import HOST_SERVICE_PORT, HTTP_PORT, METADATA_IP, UPLINK_IP, WEB2_IP, WEB_IP
from tests.testbed.microvm.runner import make_runner

pytestmark = pytest.mark.microvm


def boot(sbx):
    n = sbx.network
    vm = make_runner(netns=n.netns, tap=n.tap, guest_mac=n.guest_mac, boot_ip_arg=n.boot_ip_arg)
    vm.start()
    return vm


def wget(vm, url: str, seconds: int = 5):
    return vm.run(f"timeout {seconds} wget -q -O- {url}", timeout=seconds + 10)


def test_two_microvms_egress_ingress_isolation_restart_and_release(bed, tmp_path):
    cfg = write_config(bed, tmp_path, pool_size=0)
    daemon = Daemon(cfg).start()
    vms = []
    try:
        with daemon.client() as c:
            a, b = c.allocate("vm-a"), c.allocate("vm-b")
            with ThreadPoolExecutor(2) as pool:
                vms = list(pool.map(boot, (a, b)))
            vm_a, vm_b = vms

            # Egress: each guest reaches the internet server, which sees the uplink address.
            for vm in vms:
                res = wget(vm, f"http://{WEB_IP}:{HTTP_PORT}/")
                assert res.exit_code == 0, res.output
                assert json.loads(res.output.strip().splitlines()[-1])["client"] == UPLINK_IP

            # Ingress: an internet client reaches a guest port through DNAT.
            assert vm_a.run("mkdir -p /www && echo hello-from-a > /www/index.html && httpd -p 8080 -h /www"
                            ).exit_code == 0
            assert vm_b.run("mkdir -p /www && echo hello-from-b > /www/index.html && httpd -p 8080 -h /www"
                            ).exit_code == 0
            port_a = c.expose("vm-a", 8080).host_port
            port_b = c.expose("vm-b", 8080).host_port
            ok, body = bed.fetch(bed.inet, f"http://{UPLINK_IP}:{port_a}/")
            assert ok and body == "hello-from-a", body

            # Isolation: not each other, not the host, not metadata.
            for url in (f"http://{b.network.sandbox_ip}:8080/", f"http://{UPLINK_IP}:{port_b}/",
                        f"http://{UPLINK_IP}:{HOST_SERVICE_PORT}/", f"http://{METADATA_IP}:{HTTP_PORT}/"):
                res = wget(vm_a, url, seconds=3)
                assert res.exit_code != 0, f"guest a reached {url}: {res.output}"
            res = wget(vm_b, f"http://{a.network.sandbox_ip}:8080/", seconds=3)
            assert res.exit_code != 0, res.output

            # Egress policy from a real guest: a domain allowlist through the agent's DNS proxy,
            # with the resolver the guest kernel took from the ip= argument.
            c.update_policy("vm-a", internet=False, allow_out=["allowed.test"])
            res = wget(vm_a, f"http://allowed.test:{HTTP_PORT}/")
            assert res.exit_code == 0, res.output
            for url in (f"http://denied.test:{HTTP_PORT}/", f"http://{WEB2_IP}:{HTTP_PORT}/"):
                res = wget(vm_a, url, seconds=3)
                assert res.exit_code != 0, f"guest a reached {url}: {res.output}"

            # An agent restart (kill -9) during a guest's download does not break it.
            assert vm_b.run(f"(timeout 40 wget -q -O /tmp/stream http://{WEB_IP}:{HTTP_PORT}/stream?seconds=8; "
                            "echo $? > /tmp/rc) >/dev/null 2>&1 &").exit_code == 0
        time.sleep(2)
        daemon.stop(signal.SIGKILL)
        daemon = Daemon(cfg).start()
        deadline = time.monotonic() + 40
        while vm_b.run("cat /tmp/rc 2>/dev/null").output.strip() == "" and time.monotonic() < deadline:
            time.sleep(1)
        assert vm_b.run("cat /tmp/rc").output.strip() == "0"
        lines = int(vm_b.run("wc -l < /tmp/stream").output.strip())
        assert lines >= 100, f"download truncated: {lines} chunks"

        # After release nothing remains: no netns, link, element or exposed port.
        for vm in vms:
            vm.stop()
        with daemon.client() as c:
            assert c.release("vm-a") and c.release("vm-b")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _leftovers(bed):
            time.sleep(0.2)
        assert _leftovers(bed) == []
        ok, _ = bed.fetch(bed.inet, f"http://{UPLINK_IP}:{port_a}/", timeout=1)
        assert not ok
    finally:
        for vm in vms:
            vm.stop()
        daemon.stop()


def _leftovers(bed) -> list[str]:
    t = bed.agent_prefix
    found = [n for n in sh.netns_list() if n.startswith(f"{t}-")]
    found += [link for link in sh.links(bed.host) if link.startswith(f"{t}v")]
    for name in ("egress_open", "egress_blocked", "port_dnat", "sbx_ifaces", "slot_mark"):
        found += [f"{name}:{e}" for e in elements(bed.host, t, name)]
    return found

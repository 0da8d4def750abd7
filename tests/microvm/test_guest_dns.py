"""Names as a real workload sees them: QEMU guests booted with exactly the boot
argument allocate returns (its resolver is the gateway, 169.254.0.22) resolve
through the agent's resolver with the guest's own libc (busybox-static, glibc:
A and AAAA in parallel) and fetch by name."""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.microvm.test_e2e import boot, wget
from tests.service.daemon import Daemon, write_config
from tests.testbed.bed import UPLINK_IP, WEB_IP

pytestmark = pytest.mark.microvm

LOOKUPS = 10
# Microseconds of the guest clock (busybox has adjtimex, and its date has no %N).
CLOCK = "adjtimex | sed -n 's/.*time.tv_sec: *//p; s/.*time.tv_usec: *//p' | tr '\\n' ' '"


def name_lookup_ms(vm, name: str, address: str) -> float:
    """What resolving `name` adds to a fetch, per fetch: LOOKUPS fetches by name
    against LOOKUPS fetches by address, back to back (busybox wget resolves with
    getaddrinfo, AF_UNSPEC)."""
    loop = "for i in $(seq {n}); do wget -q -O /dev/null http://{host}/ || echo FAILED; done"
    script = "; ".join([f"echo T $({CLOCK})", loop.format(n=LOOKUPS, host=name), f"echo T $({CLOCK})",
                        loop.format(n=LOOKUPS, host=address), f"echo T $({CLOCK})"])
    res = vm.run(script, timeout=120)
    assert res.exit_code == 0 and "FAILED" not in res.output, res.output
    t = [int(s) * 1_000_000 + int(u) for s, u in re.findall(r"^T (\d+) (\d+)", res.output, re.M)]
    by_name, by_address = t[1] - t[0], t[2] - t[1]
    return (by_name - by_address) / LOOKUPS / 1e3


def test_guests_resolve_through_the_boot_argument_resolver_and_fetch_by_name(bed, tmp_path):
    bed.start_server(bed.inet, "--http", "80")      # http://public.test/ (port 80) in the internet netns
    daemon = Daemon(write_config(bed, tmp_path, pool_size=0)).start()
    vms = []
    try:
        with daemon.client() as c:
            default = c.allocate("dns-default")                                  # the default policy
            listed = c.allocate("dns-listed", internet=False, allow_out=["public.test"])
            with ThreadPoolExecutor(2) as pool:
                vms = list(pool.map(boot, (default, listed)))
            vm_default, vm_listed = vms
            for vm in vms:
                assert vm.run("cat /etc/resolv.conf").output.strip() == "nameserver 169.254.0.22"

            res = wget(vm_default, "http://public.test/")
            assert res.exit_code == 0, res.output
            assert json.loads(res.output.strip().splitlines()[-1]) == {"client": UPLINK_IP, "server": WEB_IP}
            assert wget(vm_default, "http://other.test/").exit_code == 0

            res = wget(vm_listed, "http://public.test/")
            assert res.exit_code == 0, res.output
            res = wget(vm_listed, "http://other.test/")
            assert res.exit_code != 0 and "bad address 'other.test'" in res.output, res.output

            # AAAA: an empty answer for a name that exists (not REFUSED, not a timeout); NXDOMAIN stays.
            res = vm_default.run("nslookup -type=AAAA public.test", timeout=30)
            assert res.exit_code == 0 and "can't find" not in res.output and "::" not in res.output, res.output
            res = vm_default.run("nslookup -type=AAAA missing.test", timeout=30)
            assert "NXDOMAIN" in res.output, res.output

            timings = {"default": name_lookup_ms(vm_default, "public.test", WEB_IP),
                       "allowlist": name_lookup_ms(vm_listed, "public.test", WEB_IP)}
            print(f"guest getaddrinfo (per lookup, ms, TCG guest): {timings}")
            for figure in timings.values():
                assert figure < 50.0, timings
    finally:
        for vm in vms:
            vm.stop()
        daemon.stop()

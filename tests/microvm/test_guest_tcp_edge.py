"""Raw TCP to a real guest kernel through the edge on 443 by SNI (issue 24 part 3).

A QEMU guest runs busybox `nc -ll -p 7000 -e cat` (a TCP echo); the orchestrator
exposes the port with mode tcp over gRPC; the edge (real haproxy with --tcp-on-https,
in the test bed's internet netns) serves it; `openssl s_client` in the internet
netns connects to the HTTPS listener with the port's SNI and gets its line echoed
by the guest, through the port's DNAT on the uplink address."""
from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

from netagent.registry.sqlite import SqliteRegistry
from tests.edge.hap import DOMAIN, running_edge
from tests.service.daemon import Daemon, write_config
from tests.testbed.microvm.runner import make_runner
from tests.testbed.tls import wildcard_pem

pytestmark = pytest.mark.microvm

ECHO = 7000
FRONT = "127.0.0.1:8443"      # in the internet netns: the edge's HTTPS listener (443 in production)


def s_client_echo(netns: str, ca: str, sni: str, line: bytes) -> bytes:
    """One line through `openssl s_client -quiet` (the documented client), run in netns."""
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "timeout", "15", "openssl", "s_client", "-quiet",
                             "-verify_return_error", "-CAfile", ca, "-connect", FRONT, "-servername", sni],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line)
        proc.stdin.flush()
        return proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_a_guest_tcp_echo_through_443_by_sni(bed, tmp_path):
    ca, pem = wildcard_pem(tmp_path / "pki", DOMAIN)
    url = f"sqlite://{tmp_path}/registry.db"
    daemon = Daemon(write_config(bed, tmp_path, pool_size=0, registry_url=url)).start()
    vm = None
    registry = SqliteRegistry(url)
    try:
        with daemon.client() as c:
            n = c.allocate("vm-tcp").network
            booted = time.monotonic()
            vm = make_runner(netns=n.netns, tap=n.tap, guest_mac=n.guest_mac, boot_ip_arg=n.boot_ip_arg)
            await asyncio.to_thread(vm.start)
            boot_s = time.monotonic() - booted
            started = vm.run(f"setsid nc -ll -p {ECHO} -e cat </dev/null >/dev/null 2>&1 &")
            assert started.exit_code == 0, started.output
            c.expose("vm-tcp", ECHO, mode="tcp")
        await registry.connect()
        async with running_edge(tmp_path / "edge", registry, netns=bed.inet, tls_pem=str(pem),
                                https_listen=(FRONT,), tcp_on_https=True):
            sni = f"{ECHO}-vm-tcp.{DOMAIN}"
            got = b""
            for _ in range(20):        # until the control plane has the record (before: HTTPS answers)
                got = await asyncio.to_thread(s_client_echo, bed.inet, str(ca), sni, b"hello guest\n")
                if got == b"hello guest\n":
                    break
                await asyncio.sleep(0.2)
            assert got == b"hello guest\n", f"no echo (guest booted in {boot_s:.1f} s)"
    finally:
        await registry.close()
        if vm is not None:
            vm.stop()
        daemon.stop()

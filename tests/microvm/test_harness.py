"""Smoke test of the microVM harness: boot the guest on a tap in a private netns.

Needs root, qemu-system-x86_64 and apt access for the first image build.
Nothing is skipped: a missing tool fails the test.  All traffic stays on a
/30 link-local network inside a namespace this test creates and deletes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from tests.testbed.microvm.runner import CommandTimeout, VMRunner, make_runner

pytestmark = pytest.mark.microvm

GUEST_IP = "169.254.0.21"
GATEWAY_IP = "169.254.0.22"
GUEST_MAC = "02:fc:00:00:00:01"
TAP_MAC = "02:fc:00:00:00:02"
TAP = "tap0"
BOOT_IP_ARG = f"ip={GUEST_IP}::{GATEWAY_IP}:255.255.255.252::eth0:off"
BOOT_BUDGET_SECONDS = float(os.environ.get("NETAGENT_VM_BOOT_BUDGET", "15"))


# --------------------------------------------------------------------------
# host side helpers


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def in_netns(netns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, *argv],
                          check=False, capture_output=True, text=True, timeout=timeout)


def python_in_netns(netns: str, script: str, *args: str) -> subprocess.CompletedProcess:
    return in_netns(netns, sys.executable, "-c", script, *args)


def create_netns_with_tap(name: str) -> None:
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")
    ip("-n", name, "tuntap", "add", TAP, "mode", "tap")
    ip("-n", name, "link", "set", TAP, "address", TAP_MAC)
    ip("-n", name, "addr", "add", f"{GATEWAY_IP}/30", "dev", TAP)
    ip("-n", name, "link", "set", TAP, "up")


def delete_netns_with_tap(name: str) -> None:
    for args in (("-n", name, "tuntap", "del", TAP, "mode", "tap"), ("netns", "del", name)):
        subprocess.run(["ip", *args], check=False, capture_output=True)


def host_ping_argv() -> list[str]:
    """iputils ping if installed, else busybox's (busybox-static is a harness dependency)."""
    if shutil.which("ping"):
        return ["ping"]
    if shutil.which("busybox"):
        return ["busybox", "ping"]
    pytest.fail("neither ping nor busybox is installed on the host")


def report(request, message: str) -> None:
    """Print past pytest's output capture, so the line shows in a plain run."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{message}", file=sys.stderr)


# --------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def netns():
    name = f"nat{secrets.token_hex(3)}-vm"
    try:
        create_netns_with_tap(name)
        yield name
    finally:
        delete_netns_with_tap(name)


@pytest.fixture(scope="module")
def vm(netns, request):
    runner = make_runner(netns=netns, tap=TAP, guest_mac=GUEST_MAC, boot_ip_arg=BOOT_IP_ARG)
    with runner:
        details = f"accel={getattr(runner, 'accel', '-')}, machine={getattr(runner, 'machine', '-')}"
        report(request, f"microVM boot: {runner.boot_seconds:.2f}s ({type(runner).__name__}, {details})")
        yield runner


# --------------------------------------------------------------------------
# tests


def test_boot_time_within_budget(vm: VMRunner, record_property):
    record_property("boot_seconds", round(vm.boot_seconds, 2))
    assert vm.boot_seconds <= BOOT_BUDGET_SECONDS


def test_exit_codes_and_output_are_passed_back(vm: VMRunner):
    assert vm.run("false").exit_code == 1
    assert vm.run("exit 7").exit_code == 7
    result = vm.run("echo hello; printf '%s\\n' \"it's 'quoted'\"")
    assert result.exit_code == 0
    assert result.output == "hello\nit's 'quoted'\n"


def test_hung_command_times_out_and_channel_recovers(vm: VMRunner):
    with pytest.raises(CommandTimeout):
        vm.run("sleep 30", timeout=1)
    assert vm.run("echo alive").output == "alive\n"


def test_guest_has_boot_address(vm: VMRunner):
    result = vm.run("ip addr show eth0")
    assert result.exit_code == 0
    assert f"inet {GUEST_IP}/30" in result.output
    assert GUEST_MAC in result.output


def test_guest_pings_gateway(vm: VMRunner):
    result = vm.run(f"ping -c1 -W2 {GATEWAY_IP}")
    assert result.exit_code == 0, result.output


def test_netns_pings_guest(vm: VMRunner, netns: str):
    result = in_netns(netns, *host_ping_argv(), "-c1", "-W2", GUEST_IP)
    assert result.returncode == 0, result.stdout + result.stderr


FETCH = """
import sys, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for attempt in range(20):  # httpd daemonizes; give it a moment to listen
    try:
        print(opener.open(sys.argv[1], timeout=5).read().decode(), end="")
        break
    except OSError:
        time.sleep(0.25)
else:
    sys.exit("no answer from " + sys.argv[1])
"""


def test_guest_httpd_reachable_from_netns(vm: VMRunner, netns: str):
    assert vm.run("httpd -p 8080 -h /www").exit_code == 0
    result = python_in_netns(netns, FETCH, f"http://{GUEST_IP}:8080/index.html")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "netagent-guest\n"


SERVE_ONE_REQUEST = """
import http.server, os, sys
os.chdir(sys.argv[1])
server = http.server.HTTPServer((sys.argv[2], 8000), http.server.SimpleHTTPRequestHandler)
server.timeout = 20
server.handle_request()
"""


def test_guest_wget_from_netns(vm: VMRunner, netns: str, tmp_path):
    (tmp_path / "hello.txt").write_text("from-netns\n")
    server = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SERVE_ONE_REQUEST,
                               str(tmp_path), GATEWAY_IP], stderr=subprocess.DEVNULL)
    try:
        url = f"http://{GATEWAY_IP}:8000/hello.txt"
        result = vm.run(f"for i in $(seq 10); do wget -q -O- {url} 2>/dev/null && break; sleep 0.3; done")
        assert result.exit_code == 0, result.output
        assert result.output == "from-netns\n"
    finally:
        server.kill()
        server.wait()


SEND_LINE = """
import socket, sys, time
for attempt in range(20):  # the guest's nc may not listen yet
    try:
        conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
        break
    except OSError:
        time.sleep(0.25)
conn.sendall(b"over-nc\\n")
conn.close()
"""


def test_guest_background_nc_receives_from_netns(vm: VMRunner, netns: str):
    assert vm.run("nc -l -p 9000 > /tmp/nc.out 2>&1 &").exit_code == 0
    sent = python_in_netns(netns, SEND_LINE, GUEST_IP, "9000")
    assert sent.returncode == 0, sent.stderr
    result = vm.run("for i in $(seq 10); do grep -q over-nc /tmp/nc.out && break; sleep 0.2; done; cat /tmp/nc.out")
    assert result.output == "over-nc\n"

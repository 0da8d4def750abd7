"""The test bed: a "host" netns for the agent, an "internet" netns on its uplink,
servers the tests start themselves, and light guests wired to slot taps.

Addresses (TEST-NET and friends, all inside namespaces made here):
  host uplink  up0   198.51.100.2/24      internet  wan0  198.51.100.1/24
  internet servers on lo: 203.0.113.10 (web), 192.0.2.20 (client side),
  169.254.169.254 (fake metadata), 10.99.0.10 (an RFC1918 service),
  100.64.0.10 (a CGNAT-range service) —
  all reachable from the host netns through its default route, so only the
  agent's rules keep sandboxes away from them.
  a host service listens on 0.0.0.0:8081 in the host netns (every host address).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field

from . import sh

UPLINK_IP = "198.51.100.2"
INET_IP = "198.51.100.1"
WEB_IP = "203.0.113.10"
WEB2_IP = "203.0.113.11"   # same servers, a second address (policy tests)
SMTP_PORT = 25
DNS_IP = "192.0.2.53"      # the test bed's DNS server (test zones only)
CLIENT_IP = "192.0.2.20"
METADATA_IP = "169.254.169.254"
RFC1918_IP = "10.99.0.10"
CGNAT_IP = "100.64.0.10"
HTTP_PORT = 8000
ECHO_PORT = 7000
HOST_SERVICE_PORT = 8081


def unique_prefix() -> str:
    return "t" + secrets.token_hex(2)


@dataclass
class Testbed:
    prefix: str = field(default_factory=unique_prefix)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"{self.prefix}h"

    @property
    def inet(self) -> str:
        return f"{self.prefix}i"

    @property
    def agent_prefix(self) -> str:
        return self.prefix

    def create(self) -> Testbed:
        sh.ip("netns", "add", self.host)
        sh.ip("netns", "add", self.inet)
        sh.ip("link", "add", "up0", "netns", self.host, "type", "veth", "peer", "name", "wan0", "netns", self.inet)
        for ns in (self.host, self.inet):
            sh.ip("link", "set", "lo", "up", ns=ns)
        sh.ip("addr", "add", f"{UPLINK_IP}/24", "dev", "up0", ns=self.host)
        sh.ip("link", "set", "up0", "up", ns=self.host)
        sh.ip("route", "add", "default", "via", INET_IP, ns=self.host)
        sh.ip("addr", "add", f"{INET_IP}/24", "dev", "wan0", ns=self.inet)
        sh.ip("link", "set", "wan0", "up", ns=self.inet)
        for addr in (WEB_IP, WEB2_IP, CLIENT_IP, METADATA_IP, RFC1918_IP, CGNAT_IP, DNS_IP):
            sh.ip("addr", "add", f"{addr}/32", "dev", "lo", ns=self.inet)
        self.start_server(self.inet, "--http", str(HTTP_PORT), "--tcp-echo", str(ECHO_PORT),
                          "--tcp-echo", str(SMTP_PORT))
        self.start_server(self.host, "--http", str(HOST_SERVICE_PORT))
        self.start_module(self.inet, "tests.testbed.dns_server", DNS_IP)
        return self

    def start_server(self, ns: str, *args: str) -> subprocess.Popen[str]:
        return self.start_module(ns, "tests.testbed.servers", *args)

    def start_module(self, ns: str, module: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sh.PYTHON, "-m", module, *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=_repo_root())
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def destroy(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        for ns in sh.netns_list():
            if ns.startswith(self.prefix):
                sh.ip("netns", "del", ns, check=False)

    def fetch(self, ns: str, url: str, timeout: float = 3.0) -> tuple[bool, str]:
        res = sh.run(sh.PYTHON, "-m", "tests.testbed.client", url, "--timeout", str(timeout), ns=ns, check=False,
                     timeout=timeout + 10)
        return res.returncode == 0, res.stdout.strip()


@dataclass
class LightGuest:
    """A netns with a real TCP/IP stack, wired to a slot's tap by a frame relay."""
    bed: Testbed
    name: str
    slot_netns: str
    tap: str
    guest_ip: str
    prefixlen: int
    gateway: str
    mac: str
    relay: subprocess.Popen[str] | None = None

    @classmethod
    def attach(cls, bed: Testbed, network: object, name: str) -> LightGuest:
        n = network  # netagent.models.Network
        g = cls(bed, f"{bed.prefix}g{name}", n.netns, n.tap, n.guest_ip, n.guest_prefixlen, n.gateway_ip,
                n.guest_mac)
        g.start()
        return g

    def start(self) -> None:
        sh.ip("netns", "add", self.name)
        sh.ip("link", "set", "lo", "up", ns=self.name)
        sh.ip("tuntap", "add", "eth0", "mode", "tap", ns=self.name)
        # a deep queue on the guest's side of the relay: bursts wait instead of being dropped
        sh.ip("link", "set", "eth0", "address", self.mac, "txqueuelen", "10000", "up", ns=self.name)
        sh.ip("addr", "add", f"{self.guest_ip}/{self.prefixlen}", "dev", "eth0", ns=self.name)
        sh.ip("route", "add", "default", "via", self.gateway, ns=self.name)
        self.relay = subprocess.Popen([sh.PYTHON, "-m", "tests.testbed.relay", self.slot_netns, self.tap,
                                       self.name, "eth0"], stdout=subprocess.PIPE, text=True, cwd=_repo_root())
        self.bed.procs.append(self.relay)
        assert self.relay.stdout is not None and self.relay.stdout.readline().strip() == "ready"

    def fetch(self, url: str, timeout: float = 3.0) -> tuple[bool, str]:
        return self.bed.fetch(self.name, url, timeout)

    def wire_drops(self) -> int:
        """Frames the relay did not take in time, both ways (the two taps' TX
        drops): losses of the test bed's wire, not of the agent's rules."""
        return _tx_dropped(self.name, "eth0") + _tx_dropped(self.slot_netns, self.tap)

    def stop(self) -> None:
        if self.relay:
            self.relay.kill()
            self.relay.wait(5)
        sh.ip("netns", "del", self.name, check=False)


def _tx_dropped(ns: str, ifname: str) -> int:
    [link] = json.loads(sh.run("ip", "-s", "-j", "link", "show", "dev", ifname, ns=ns).stdout)
    return int(link["stats64"]["tx"]["dropped"])


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


async def eventually(predicate, timeout: float = 10.0, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    """wait_until for async tests: sleeps without blocking the agent's event loop."""
    import asyncio
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

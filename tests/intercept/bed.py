"""The interception test bed: real namespaces, a real HAProxy interceptor.

  guest (198.51.100.2), guest2 (192.0.2.2) ── host (198.51.100.1, 192.0.2.1 | 203.0.113.1)
      ── inet (203.0.113.10 api.test, .11 other.test)

The host netns holds the interceptor and the steering rule (the same fixed
rule as rules/netagent.nft, with its map filled by the test). The upstream has
its own CA; the interceptor verifies against it (its ca_bundle)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netagent.intercept.ca import InterceptCA
from netagent.intercept.control import Interceptor
from netagent.intercept.haconfig import InterceptSettings
from tests.testbed import sh, tls

GUEST_IP, HOST_G_IP, HOST_I_IP = "198.51.100.2", "198.51.100.1", "203.0.113.1"
GUEST2_IP, HOST_G2_IP = "192.0.2.2", "192.0.2.1"
API_IP, OTHER_IP = "203.0.113.10", "203.0.113.11"
TLS_PORT, PLAIN_PORT = 15443, 15080
STEER_NFT = f"""
table inet natest {{
  map intercept_steer {{ type ipv4_addr . ipv4_addr . inet_service : inet_service; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto tcp redirect to : ip saddr . ip daddr . tcp dport map @intercept_steer
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    tcp dport {{ {TLS_PORT}, {PLAIN_PORT} }} ct status & dnat == 0 drop
  }}
}}
"""


@dataclass
class Bed:
    tmp: Path
    guest: str
    host: str
    inet: str
    interceptor: Interceptor
    upstream_ca: Path
    upstream_log: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def ca_file(self) -> Path:
        return self.interceptor.ca.cert_path

    guest2: str = ""

    def steer(self, dst: str, port: int, src: str = GUEST_IP) -> None:
        proxy = PLAIN_PORT if port == 80 else TLS_PORT
        sh.run("nft", f"add element inet natest intercept_steer {{ {src} . {dst} . {port} : {proxy} }}",
               ns=self.host)

    def curl(self, url: str, *args: str, ca: bool = True, check: bool = False,
             ns: str | None = None) -> subprocess.CompletedProcess[str]:
        res = sh.run("curl", "-sS", "--max-time", "10", "--resolve", f"api.test:443:{API_IP}",
                     "--resolve", f"api.test:80:{API_IP}", "--resolve", f"other.test:443:{OTHER_IP}",
                     *(["--cacert", str(self.combined_ca)] if ca else []), *args, url,
                     ns=ns or self.guest, check=check, timeout=30)
        return res

    @property
    def combined_ca(self) -> Path:
        # the guest trusts the host CA (intercepted names) and the upstream's (other.test, not intercepted)
        path = self.tmp / "guest-trust.pem"
        if not path.exists():
            path.write_text(self.ca_file.read_text() + self.upstream_ca.read_text())
        return path

    def upstream_requests(self) -> list[dict[str, Any]]:
        if not self.upstream_log.exists():
            return []
        return [json.loads(line) for line in self.upstream_log.read_text().splitlines() if line.strip()]


def _wire(a_ns: str, a_if: str, a_ip: str, b_ns: str, b_if: str, b_ip: str) -> None:
    sh.ip("link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if, "netns", b_ns)
    sh.ip("addr", "add", f"{a_ip}/24", "dev", a_if, ns=a_ns)
    sh.ip("addr", "add", f"{b_ip}/24", "dev", b_if, ns=b_ns)
    sh.ip("link", "set", a_if, "up", ns=a_ns)
    sh.ip("link", "set", b_if, "up", ns=b_ns)


@contextlib.asynccontextmanager
async def intercept_bed(tmp: Path, **overrides: Any) -> AsyncIterator[Bed]:
    tag = uuid.uuid4().hex[:6]
    guest, host, inet, guest2 = f"ic-g-{tag}", f"ic-h-{tag}", f"ic-i-{tag}", f"ic-n-{tag}"
    made: list[str] = []
    procs: list[subprocess.Popen[str]] = []
    interceptor = None
    try:
        for ns in (guest, host, inet, guest2):
            sh.ip("netns", "add", ns)
            made.append(ns)
            sh.ip("link", "set", "lo", "up", ns=ns)
        _wire(guest, "eth0", GUEST_IP, host, "g0", HOST_G_IP)
        _wire(host, "i0", HOST_I_IP, inet, "eth0", API_IP)
        sh.ip("addr", "add", f"{OTHER_IP}/24", "dev", "eth0", ns=inet)
        _wire(guest2, "eth0", GUEST2_IP, host, "g1", HOST_G2_IP)
        sh.ip("route", "add", "default", "via", HOST_G_IP, ns=guest)
        sh.ip("route", "add", "default", "via", HOST_G2_IP, ns=guest2)
        sh.ip("route", "add", "default", "via", HOST_I_IP, ns=inet)
        sh.run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=host)
        sh.run("nft", "-f", "-", ns=host, input=STEER_NFT)
        up = tmp / "upstream"
        up.mkdir()
        upstream_ca = tls.make_ca(up, "upstream-ca")
        crt, key = tls.issue(up, "upstream", "DNS:api.test,DNS:other.test")
        upstream_log = up / "requests.jsonl"
        proc = sh.popen(sh.PYTHON, "-m", "tests.testbed.echo_upstream", "0.0.0.0", str(crt), str(key),
                        str(upstream_log), ns=inet)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        settings = InterceptSettings(state_dir=tmp / "state", run_dir=tmp / "run", ca_bundle=str(upstream_ca),
                                     tls_port=TLS_PORT, plain_port=PLAIN_PORT, **overrides)
        records: list[dict[str, Any]] = []
        interceptor = Interceptor(settings, InterceptCA(tmp / "state" / "ca"), records.append, netns=host)
        await interceptor.start()
        yield Bed(tmp, guest, host, inet, interceptor, upstream_ca, upstream_log, records, procs, guest2)
    finally:
        if interceptor is not None:
            await interceptor.stop()
        for p in procs:
            p.kill()
            p.wait(5)
        for ns in made:
            sh.ip("netns", "del", ns, check=False)


async def eventually(check, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    import asyncio
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s")
        await asyncio.sleep(0.02)
    return result


def read_tree(root: Path) -> bytes:
    """Every regular file under root, concatenated (a grep for a secret)."""
    out = b""
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file():
                out += p.read_bytes()
    return out

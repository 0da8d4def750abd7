"""A real ACME server for tests: Debian's `pebble`, with `pebble-challtestsrv` as the
DNS it resolves names with (and the edge's DNS check asks), all on loopback ports.
Its VA checks HTTP-01 on `http_port` of whatever the name resolves to (the edge's
HAProxy in the tests). A missing binary is a failure, never a skip."""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from .haproxy_proc import loopback_port
from .tls import issue, make_ca


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{proc.args[0]} did not start:\n{log.read_text(errors='replace')[-2000:]}", pytrace=False)
        time.sleep(0.02)


class Pebble:
    def __init__(self, workdir: Path, http_port: int, validity_s: int = 0) -> None:
        self.workdir = workdir
        self.http_port = http_port
        self.validity_s = validity_s
        self.dns_port = loopback_port()
        self.dns_mgmt_port = loopback_port()
        self.acme_port = loopback_port()
        self.mgmt_port = loopback_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    @property
    def resolver(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    @property
    def ca_file(self) -> str:
        """The CA of pebble's own HTTPS listener (not of the certificates it issues)."""
        return str(self.workdir / "ca.crt")

    def start(self) -> Pebble:
        for exe in ("pebble", "pebble-challtestsrv"):
            if shutil.which(exe) is None:
                pytest.fail(f"{exe} is not installed (apt-get install pebble)", pytrace=False)
        self.workdir.mkdir(parents=True, exist_ok=True)
        make_ca(self.workdir, "pebble-listener-ca")
        crt, key = issue(self.workdir, "pebble", "DNS:localhost,IP:127.0.0.1")
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.acme_port}", "managementListenAddress": f"127.0.0.1:{self.mgmt_port}",
            "certificate": str(crt), "privateKey": str(key), "httpPort": self.http_port,
            "tlsPort": loopback_port(), "ocspResponderURL": "", "externalAccountBindingRequired": False}}
        if self.validity_s:
            config["pebble"]["certificateValidityPeriod"] = self.validity_s
        (self.workdir / "pebble.json").write_text(json.dumps(config))
        deadline = time.monotonic() + 15
        try:
            # challtestsrv as DNS only: names it was not told about have no address.
            self._spawn(["pebble-challtestsrv", "-dns01", self.resolver, "-management",
                         f"127.0.0.1:{self.dns_mgmt_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
                         "-defaultIPv4", "", "-defaultIPv6", ""], "challtestsrv.log", self.dns_mgmt_port, deadline)
            self._spawn(["pebble", "-config", str(self.workdir / "pebble.json"), "-dnsserver", self.resolver],
                        "pebble.log", self.acme_port, deadline)
        except BaseException:      # pytest.fail included: nothing started here outlives the failure
            self.stop()
            raise
        return self

    def _spawn(self, args: list[str], log_name: str, port: int, deadline: float) -> None:
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1"}
        log = self.workdir / log_name
        with open(log, "ab") as f:
            proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        _wait_port(port, proc, log, deadline)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self.procs.clear()

    def set_a(self, host: str, *addresses: str) -> None:
        """The DNS answer for `host`, replacing the previous one (no addresses: none)."""
        self._dns_mgmt("clear-a", {"host": host.rstrip(".") + "."})
        if addresses:
            self._dns_mgmt("add-a", {"host": host.rstrip(".") + ".", "addresses": list(addresses)})

    def _dns_mgmt(self, path: str, body: dict[str, object]) -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{self.dns_mgmt_port}/{path}", data=json.dumps(body).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200, r.status

    def issuing_roots(self) -> str:
        """PEM of the root the certificates pebble issues chain to (it makes a new one per start)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(f"https://127.0.0.1:{self.mgmt_port}/roots/0", context=ctx, timeout=5) as r:
            return r.read().decode()

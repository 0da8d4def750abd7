"""Custom domains with ACME certificates, against real components: Debian's pebble
(the ACME server) with pebble-challtestsrv as the DNS, the edge's real HAProxy, and
the control plane's domain API. pebble's VA fetches the HTTP-01 answer from HAProxy's
plain listener; the certificate is installed at runtime (the same HAProxy pid)."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509

from netagent.edge import domainconfig
from netagent.edge.acme import not_after
from netagent.edge.certruntime import CertRuntime
from netagent.edge.domainapi import DomainApi
from netagent.edge.domainmanager import AcmeSettings, DomainManager
from netagent.edge.domains import Backoff, OrderLimits
from netagent.edge.runtime import HAProxyRuntime
from tests.testbed.haproxy_proc import HAProxy, loopback_port
from tests.testbed.pebble_proc import Pebble
from tests.testbed.tls import wildcard_pem

from .hap import DOMAIN, eventually, running_edge
from .helpers import sandbox

APP = "app.customer.test"


@dataclass
class Bed:
    haproxy: HAProxy
    pebble: Pebble
    manager: DomainManager
    api_port: int
    ca: Path            # the wildcard's CA
    workdir: Path

    def call(self, method: str, path: str, body: object | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}/v1/domains{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else {}
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    async def acall(self, method: str, path: str, body: object | None = None) -> tuple[int, dict]:
        return await asyncio.to_thread(self.call, method, path, body)

    async def status_of(self, domain: str, *statuses: str, timeout_s: float = 15.0) -> dict:
        async def reached() -> bool:
            return (await self.acall("GET", f"/{domain}"))[1].get("status") in statuses
        await eventually(reached, timeout_s=timeout_s, every_s=0.05)
        return (await self.acall("GET", f"/{domain}"))[1]


async def start_manager(haproxy: HAProxy, pebble: Pebble, clock: Callable[[], float] = time.time,
                        **overrides: object) -> tuple[DomainManager, DomainApi, int]:
    s = haproxy.settings
    settings = AcmeSettings(directory_url=pebble.directory_url, edge_domain=DOMAIN,
                            edge_addresses=frozenset({"127.0.0.1"}), resolver=pebble.resolver, ca_file=pebble.ca_file,
                            backoff=Backoff(0.3, 2.0), tick_s=0.05)
    settings = replace(settings, **overrides)  # type: ignore[arg-type]
    certs = CertRuntime(HAProxyRuntime(s.admin_socket, s.map_dir), s.map_dir, s.certs_dir, s.tls_pem)
    manager = DomainManager(settings, certs, clock)
    api = DomainApi(manager)
    port = await api.start("127.0.0.1", 0)
    return manager, api, port


@dataclass
class AcmeEnv:
    pebble: Pebble
    http_port: int     # each test's HAProxy listens here in turn: pebble's VA fetches challenges from it
    ca: Path           # the wildcard's CA
    pem: Path          # the wildcard's chain and key


@pytest.fixture(scope="module")
def acme_env(tmp_path_factory) -> Iterator[AcmeEnv]:
    """One pebble (and DNS) for the module: each test has its own ACME account and names."""
    d = tmp_path_factory.mktemp("acme")
    ca, pem = wildcard_pem(d / "pki", DOMAIN)
    http_port = loopback_port()
    pebble = Pebble(d / "pebble", http_port).start()
    try:
        yield AcmeEnv(pebble, http_port, ca, pem)
    finally:
        pebble.stop()


@pytest.fixture
async def bed(request, tmp_path, registry, upstream, acme_env: AcmeEnv) -> AsyncIterator[Bed]:
    overrides = dict(getattr(request, "param", {}))
    validity_s = overrides.pop("validity_s", 0)
    await registry.put_sandbox(sandbox("abc", {3000: (upstream.port, True)}), ttl_s=300)
    https = loopback_port()
    async with running_edge(tmp_path / "edge", registry, http_listen=(f"127.0.0.1:{acme_env.http_port}",),
                            https_listen=(f"127.0.0.1:{https}",), tls_pem=str(acme_env.pem), https_public_port=https,
                            certs_dir=str(tmp_path / "edge" / "certs")) as (haproxy, _):
        own = Pebble(tmp_path / "pebble", haproxy.http_port, validity_s=validity_s) if validity_s else None
        pebble = own.start() if own else acme_env.pebble
        try:
            manager, api, port = await start_manager(haproxy, pebble, **overrides)  # type: ignore[arg-type]
            task = asyncio.create_task(manager.run())
            try:
                yield Bed(haproxy, pebble, manager, port, acme_env.ca, tmp_path)
            finally:
                await api.stop()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await manager.close()
                await manager.certs.runtime.close()
        finally:
            if own:
                own.stop()


def served_cert(port: int, name: str, roots: str | None) -> x509.Certificate:
    """The leaf HAProxy serves for SNI `name`, verified against `roots` (pebble's issuing root)."""
    ctx = ssl.create_default_context(cadata=roots) if roots else ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def https_get(port: int, name: str, roots: str) -> tuple[int, str]:
    out = subprocess.run(["curl", "-sS", "--max-time", "10", "--resolve", f"{name}:{port}:127.0.0.1",
                          "--cacert", "/dev/stdin", "-w", "\n%{http_code}", f"https://{name}:{port}/hello"],
                         input=roots, capture_output=True, text=True)
    body, _, code = out.stdout.rpartition("\n")
    return int(code or 0), body + out.stderr


def handshake_fails(port: int, name: str) -> bool:
    try:
        served_cert(port, name, None)
    except (ssl.SSLError, ConnectionError):
        return True
    return False


async def test_mapped_domain_gets_a_pebble_certificate_at_runtime_and_reaches_the_sandbox(bed: Bed) -> None:
    bed.pebble.set_a(APP, "127.0.0.1")
    pid = bed.haproxy.pid_answering()
    assert await asyncio.to_thread(handshake_fails, bed.haproxy.https_port, APP)   # strict-sni: no cert yet
    started = time.monotonic()
    status, doc = await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
    assert status == 202 and doc["status"] in ("pending", "ordering")
    doc = await bed.status_of(APP, "issued")
    served_after = time.monotonic() - started
    roots = bed.pebble.issuing_roots()
    leaf = await asyncio.to_thread(served_cert, bed.haproxy.https_port, APP, roots)
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == [APP]
    code, body = await asyncio.to_thread(https_get, bed.haproxy.https_port, APP, roots)
    assert code == 200 and '"target": "/hello"' in body and f'["host", "{APP}' in body, body
    assert bed.haproxy.pid_answering() == pid, "installed without a reload"
    # The sandbox's own URL still works beside it (the wildcard), and plain HTTP keeps the custom name.
    sandbox_host = f"3000-abc.{DOMAIN}"
    code, body = await asyncio.to_thread(https_get, bed.haproxy.https_port, sandbox_host, bed.ca.read_text())
    assert code == 200 and f'["host", "{sandbox_host}' in body, body
    redirect = await asyncio.to_thread(subprocess.run, [
        "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "--max-time", "10",
        "--resolve", f"{APP}:{bed.haproxy.http_port}:127.0.0.1", f"http://{APP}:{bed.haproxy.http_port}/p"],
        capture_output=True, text=True)
    assert redirect.stdout == f"308 https://{APP}:{bed.haproxy.https_port}/p", redirect.stdout + redirect.stderr
    assert doc["notAfter"] == not_after(leaf)
    # On disk for a restart: the PEM, the crt-list line, the route.
    certs_dir = bed.haproxy.settings.certs_dir
    assert domainconfig.cert_path(certs_dir, APP) in Path(domainconfig.crt_list(certs_dir)).read_text()
    assert f"{APP} 3000-abc.{DOMAIN}" in Path(domainconfig.domains_map(bed.haproxy.settings.map_dir)).read_text()
    print(f"mapping to served certificate: {served_after:.3f} s")


async def test_removal_takes_the_certificate_and_route_out_at_runtime(bed: Bed) -> None:
    bed.pebble.set_a(APP, "127.0.0.1")
    await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
    await bed.status_of(APP, "issued")
    pid = bed.haproxy.pid_answering()
    status, _ = await bed.acall("DELETE", f"/{APP}")
    assert status == 204
    assert await asyncio.to_thread(handshake_fails, bed.haproxy.https_port, APP)
    assert (await bed.acall("GET", f"/{APP}"))[0] == 404
    s = bed.haproxy.settings
    assert not Path(domainconfig.cert_path(s.certs_dir, APP)).exists()
    assert APP not in Path(domainconfig.crt_list(s.certs_dir)).read_text()
    assert APP not in Path(domainconfig.domains_map(s.map_dir)).read_text()
    (reply,) = await bed.manager.certs.runtime.commands([f"show map {domainconfig.domains_map(s.map_dir)}\n"])
    assert APP not in reply
    assert bed.haproxy.pid_answering() == pid


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def worker_passes(bed: Bed, n: int) -> None:
    """Wait until the worker has looked for due work n more times."""
    target = bed.manager.passes + n
    await eventually(lambda: _true(bed.manager.passes >= target), timeout_s=10)


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("bed", [{"clock": FakeClock()}], indirect=True)
async def test_a_domain_not_pointing_here_is_refused_with_backoff_then_issued_once_it_does(bed: Bed) -> None:
    clock = bed.manager.clock
    bed.pebble.set_a(APP, "192.0.2.7")     # another host (TEST-NET: never contacted)
    await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
    await eventually(lambda: _attempts_at_least(bed, APP, 1), timeout_s=10)
    doc = (await bed.acall("GET", f"/{APP}"))[1]
    assert doc["status"] == "dns_mismatch" and "192.0.2.7" in doc["detail"] and "127.0.0.1" in doc["detail"]
    # Backoff (base 0.3 s, doubling, cap 2 s), on the manager's clock: no retry before it is due.
    for n, delay in enumerate([0.3, 0.6, 1.2, 2.0, 2.0], start=1):
        doc = (await bed.acall("GET", f"/{APP}"))[1]
        assert doc["attempts"] == n and doc["nextAttemptAt"] == pytest.approx(clock.now + delay)
        await worker_passes(bed, 5)
        assert (await bed.acall("GET", f"/{APP}"))[1]["attempts"] == n, "retried before its backoff"
        clock.now += delay
        await eventually(lambda n=n: _attempts_at_least(bed, APP, n + 1), timeout_s=10)
    assert bed.manager.orders_started == 0, "no ACME order for a name that does not reach the edge"
    bed.pebble.set_a(APP, "127.0.0.1")
    clock.now += 2.0
    doc = await bed.status_of(APP, "issued", timeout_s=15)
    assert bed.manager.orders_started == 1 and doc["attempts"] == 0


async def _attempts_at_least(bed: Bed, domain: str, n: int) -> bool:
    return (await bed.acall("GET", f"/{domain}"))[1].get("attempts", 0) >= n


async def test_bad_input_is_refused_and_a_domain_has_one_owner(bed: Bed) -> None:
    for bad in ("bad_char.customer.test", "*.customer.test", "localhost", "1.2.3.4", "a..b.test",
                "-x.customer.test", f"5000-abc.{DOMAIN}", DOMAIN, "x" * 64 + ".test"):
        status, doc = await bed.acall("PUT", f"/{bad}", {"sandboxId": "abc", "port": 3000})
        assert status == 400, (bad, doc)
    for body in ({"sandboxId": "ABC", "port": 3000}, {"sandboxId": "abc", "port": 0}, {"sandboxId": "abc"}, []):
        assert (await bed.acall("PUT", f"/{APP}", body))[0] == 400, body
    bed.pebble.set_a(APP, "127.0.0.1")
    assert (await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000}))[0] == 202
    status, doc = await bed.acall("PUT", f"/{APP}", {"sandboxId": "other", "port": 3000})
    assert status == 409 and "abc" in doc["message"]
    assert (await bed.acall("GET", f"/{APP}"))[1]["sandboxId"] == "abc"


async def test_identical_concurrent_requests_share_one_order(bed: Bed) -> None:
    bed.pebble.set_a(APP, "127.0.0.1")
    results = await asyncio.gather(*(bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
                                     for _ in range(20)))
    assert sorted(status for status, _ in results) == [200] * 19 + [202]
    for _ in range(5):                 # the worker looks again while the first attempt is in flight
        bed.manager._start_due()
    await bed.status_of(APP, "issued")
    assert bed.manager.orders_started == 1


@pytest.mark.parametrize("bed", [{"limits": OrderLimits(per_domain=5, global_count=3)}], indirect=True)
async def test_a_flood_of_domains_is_held_by_the_global_order_limit(bed: Bed) -> None:
    names = [f"d{i}.customer.test" for i in range(12)]
    for name in names:
        bed.pebble.set_a(name, "127.0.0.1")
    await asyncio.gather(*(bed.acall("PUT", f"/{n}", {"sandboxId": "abc", "port": 3000}) for n in names))

    async def settled() -> bool:
        docs = (await bed.acall("GET", ""))[1]["domains"]
        return all(d["status"] in ("issued", "rate_limited") for d in docs)
    await eventually(settled, timeout_s=20, every_s=0.1)
    docs = (await bed.acall("GET", ""))[1]["domains"]
    assert sorted(d["status"] for d in docs) == ["issued"] * 3 + ["rate_limited"] * 9
    limited = [d for d in docs if d["status"] == "rate_limited"]
    assert all("per edge" in d["detail"] and d["nextAttemptAt"] > time.time() + 3000 for d in limited)
    assert bed.manager.orders_started == 3


async def test_renewal_replaces_the_served_certificate_without_a_reload(bed: Bed) -> None:
    bed.pebble.set_a(APP, "127.0.0.1")
    await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
    first = await bed.status_of(APP, "issued")
    roots = bed.pebble.issuing_roots()
    before = await asyncio.to_thread(served_cert, bed.haproxy.https_port, APP, roots)
    pid = bed.haproxy.pid_answering()
    bed.manager.settings.renew_before_s = 10 * 365 * 86400.0    # force the window: every cert is due

    async def renewed() -> bool:
        return (await bed.acall("GET", f"/{APP}"))[1]["issuedAt"] > first["issuedAt"]
    await eventually(renewed, timeout_s=15, every_s=0.05)
    bed.manager.settings.renew_before_s = 0.0
    after = await asyncio.to_thread(served_cert, bed.haproxy.https_port, APP, roots)
    assert after.serial_number != before.serial_number
    assert bed.haproxy.pid_answering() == pid
    assert bed.manager.orders_started >= 2


async def test_a_restarted_edge_serves_the_certificate_from_its_files(bed: Bed) -> None:
    bed.pebble.set_a(APP, "127.0.0.1")
    await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
    await bed.status_of(APP, "issued")
    roots = bed.pebble.issuing_roots()
    serial = (await asyncio.to_thread(served_cert, bed.haproxy.https_port, APP, roots)).serial_number
    bed.haproxy.kill()
    bed.haproxy.start()              # loads crt-list.txt and domains.map as they are on disk
    leaf = await asyncio.to_thread(served_cert, bed.haproxy.https_port, APP, roots)
    assert leaf.serial_number == serial
    # And a new manager reads its state back: the domain is issued, nothing is ordered again.
    manager, api, _ = await start_manager(bed.haproxy, bed.pebble)
    try:
        manager._load()
        assert manager.records[APP].status == "issued" and manager.records[APP].sandbox_id == "abc"
    finally:
        await api.stop()
        await manager.certs.runtime.close()


async def test_a_certificate_issued_after_a_reload_reaches_the_new_process(bed: Bed) -> None:
    other = "other.customer.test"
    for name in (APP, other):
        bed.pebble.set_a(name, "127.0.0.1")
    await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
    await bed.status_of(APP, "issued")
    new_pid = await asyncio.to_thread(bed.haproxy.reload)
    await bed.acall("PUT", f"/{other}", {"sandboxId": "abc", "port": 3000})
    await bed.status_of(other, "issued")
    roots = bed.pebble.issuing_roots()
    for name in (APP, other):     # APP from the files the new process loaded, other at runtime
        await asyncio.to_thread(served_cert, bed.haproxy.https_port, name, roots)
    assert bed.haproxy.pid_answering() == new_pid


async def test_netagent_edge_runs_the_domain_api_with_its_options(tmp_path, registry, upstream,
                                                                 acme_env: AcmeEnv) -> None:
    """The command's wiring: `netagent edge … --domains-api` maps, orders and serves."""
    ca, pem, pebble = acme_env.ca, acme_env.pem, acme_env.pebble
    await registry.put_sandbox(sandbox("abc", {3000: (upstream.port, True)}), ttl_s=300)
    certs_dir = tmp_path / "edge" / "certs"
    async with running_edge(tmp_path / "edge", registry, http_listen=(f"127.0.0.1:{acme_env.http_port}",),
                            https_listen=(f"127.0.0.1:{loopback_port()}",), tls_pem=str(pem),
                            certs_dir=str(certs_dir)) as (haproxy, _):
        api_port, metrics_port = loopback_port(), loopback_port()
        s = haproxy.settings
        proc = subprocess.Popen(
            [sys.executable, "-m", "netagent", "edge", "--registry", f"sqlite:///{tmp_path}/registry.db",
             "--domain", DOMAIN, "--haproxy-socket", s.admin_socket, "--map-dir", s.map_dir, "--shards", str(s.shards),
             "--tls-pem", str(pem), "--certs-dir", str(certs_dir), "--domains-api", f"127.0.0.1:{api_port}",
             "--acme-directory", pebble.directory_url, "--acme-ca-file", pebble.ca_file,
             "--acme-dns-resolver", pebble.resolver, "--public-address", "127.0.0.1",
             "--metrics-address", f"127.0.0.1:{metrics_port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "control.log", "wb"))  # noqa: SIM115
        try:
            pebble.set_a(APP, "127.0.0.1")
            bed = Bed(haproxy, pebble, None, api_port, ca, tmp_path)  # type: ignore[arg-type]

            async def answers() -> bool:
                try:
                    return (await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000}))[0] in (200, 202)
                except OSError:
                    return False
            await eventually(answers, timeout_s=15, every_s=0.1)
            await bed.status_of(APP, "issued")
            await asyncio.to_thread(served_cert, haproxy.https_port, APP, pebble.issuing_roots())
            metrics = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode())
            for line in ('netagent_edge_custom_domains{status="issued"} 1.0',
                         'netagent_edge_custom_domains{status="dns_mismatch"} 0.0',
                         'netagent_edge_acme_orders_total{result="issued"} 1.0'):
                assert line in metrics, line
            assert "netagent_edge_custom_domains_earliest_expiry_timestamp_seconds 1." in metrics
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def netagent_domains(bed: Bed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netagent", "domains", "--api", f"127.0.0.1:{bed.api_port}", *args],
                          capture_output=True, text=True, timeout=30)


async def test_netagent_domains_adds_shows_lists_and_removes(bed: Bed) -> None:
    bed.pebble.set_a(APP, "127.0.0.1")
    out = await asyncio.to_thread(netagent_domains, bed, "add", APP, "abc", "3000")
    assert out.returncode == 0 and f"domain:        {APP}" in out.stdout, out.stderr
    await bed.status_of(APP, "issued")
    out = await asyncio.to_thread(netagent_domains, bed, "show", APP)
    assert "status:        issued" in out.stdout and "target:        abc port 3000" in out.stdout, out.stdout
    out = await asyncio.to_thread(netagent_domains, bed, "list")
    assert out.stdout.splitlines()[1].split()[:3] == [APP, "abc:3000", "issued"], out.stdout
    out = await asyncio.to_thread(netagent_domains, bed, "add", "bad_name.test", "abc", "3000")
    assert out.returncode == 1 and "400" in out.stderr and "bad_name.test" in out.stderr
    out = await asyncio.to_thread(netagent_domains, bed, "rm", APP)
    assert out.returncode == 0 and (await bed.acall("GET", f"/{APP}"))[0] == 404


@pytest.mark.slow
@pytest.mark.parametrize("bed", [{"validity_s": 20, "renew_before_s": 12.0}], indirect=True)
async def test_a_short_lived_certificate_is_renewed_inside_its_window(bed: Bed) -> None:
    """pebble issues 20 s certificates; the window is 12 s: the renewal starts ~8 s after
    the issue, on the real clock, with nothing forced."""
    bed.pebble.set_a(APP, "127.0.0.1")
    await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
    first = await bed.status_of(APP, "issued")
    assert first["notAfter"] - first["issuedAt"] <= 21
    roots = bed.pebble.issuing_roots()
    before = await asyncio.to_thread(served_cert, bed.haproxy.https_port, APP, roots)
    pid = bed.haproxy.pid_answering()

    async def renewed() -> bool:
        return (await bed.acall("GET", f"/{APP}"))[1]["issuedAt"] > first["issuedAt"]
    await eventually(renewed, timeout_s=30, every_s=0.2)
    doc = (await bed.acall("GET", f"/{APP}"))[1]
    assert doc["issuedAt"] >= first["notAfter"] - 12.0 - 1, "renewed inside the window, not before it"
    assert doc["notAfter"] > first["notAfter"] and doc["status"] == "issued"
    after = await asyncio.to_thread(served_cert, bed.haproxy.https_port, APP, roots)
    assert after.serial_number != before.serial_number and bed.haproxy.pid_answering() == pid


async def test_the_api_refuses_bad_requests_and_wants_its_token(bed: Bed) -> None:
    async def raw(port: int, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        answer = await reader.read()
        writer.close()
        return answer
    big = b"x" * 5000
    assert (await raw(bed.api_port, b"PUT /v1/domains/a.test HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + big)
            ).startswith(b"HTTP/1.1 413")
    assert (await raw(bed.api_port, b"PUT /v1/domains/a.test HTTP/1.1\r\nContent-Length: 3\r\n\r\n{x}")
            ).startswith(b"HTTP/1.1 400")
    assert (await raw(bed.api_port, b"GARBAGE\r\n\r\n")).startswith(b"HTTP/1.1 400")
    assert (await raw(bed.api_port, b"POST /v1/domains/a.test HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
    guarded = DomainApi(bed.manager, token="s3cret")
    port = await guarded.start("127.0.0.1", 0)
    try:
        assert (await raw(port, b"GET /v1/domains HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 401")
        assert (await raw(port, b"GET /v1/domains HTTP/1.1\r\nAuthorization: Bearer wrong\r\n\r\n")
                ).startswith(b"HTTP/1.1 401")
        assert (await raw(port, b"GET /v1/domains HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n")
                ).startswith(b"HTTP/1.1 200")
    finally:
        await guarded.stop()


async def test_removal_during_an_order_leaves_haproxy_clean(bed: Bed) -> None:
    """DELETE while the challenge is published (held there by the test): the order is
    cancelled, the challenge and the route leave HAProxy, and the next name is issued
    (HAProxy's one ssl cert transaction was not left open)."""
    other = "other.customer.test"
    for name in (APP, other):
        bed.pebble.set_a(name, "127.0.0.1")
    certs = bed.manager.certs
    published, hold = asyncio.Event(), asyncio.Event()
    original = certs.set_challenge

    async def held(token: str, key_authorization: str) -> None:
        await original(token, key_authorization)
        published.set()
        await hold.wait()
    certs.set_challenge = held  # type: ignore[method-assign]
    await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
    async with asyncio.timeout(10):
        await published.wait()
    assert (await bed.acall("GET", f"/{APP}"))[1]["status"] == "ordering"
    assert (await bed.acall("DELETE", f"/{APP}"))[0] == 204
    certs.set_challenge = original  # type: ignore[method-assign]
    s = bed.haproxy.settings
    acme_entries, routes = await certs.runtime.commands([f"show map {domainconfig.acme_map(s.map_dir)}\n",
                                                         f"show map {domainconfig.domains_map(s.map_dir)}\n"])
    assert acme_entries.strip() == "" and APP not in routes
    await bed.acall("PUT", f"/{other}", {"sandboxId": "abc", "port": 3000})
    await bed.status_of(other, "issued")
    assert await asyncio.to_thread(handshake_fails, bed.haproxy.https_port, APP)
    assert not Path(domainconfig.cert_path(s.certs_dir, APP)).exists()


@pytest.mark.parametrize("bed", [{"limits": OrderLimits(per_domain=2, global_count=50)}], indirect=True)
async def test_re_adding_a_domain_does_not_reset_its_order_limit(bed: Bed) -> None:
    bed.pebble.set_a(APP, "127.0.0.1")
    for _ in range(2):
        await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
        await bed.status_of(APP, "issued")
        assert (await bed.acall("DELETE", f"/{APP}"))[0] == 204
    await bed.acall("PUT", f"/{APP}", {"sandboxId": "abc", "port": 3000})
    doc = await bed.status_of(APP, "rate_limited")
    assert "per domain" in doc["detail"] and bed.manager.orders_started == 2

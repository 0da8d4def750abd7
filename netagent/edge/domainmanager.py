"""Custom domains in the edge's control plane: the mappings the API accepts, and one
worker that checks DNS, orders certificates over ACME, installs them into HAProxy at
runtime and renews them (docs/edge.md, "Custom domains").

State is one JSON file in the certificates directory (written atomically after each
change); the certificates and HAProxy's maps are on disk too, so a restarted edge
serves what it served.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey

from . import acme, dnscheck
from .certruntime import CertRuntime
from .domains import (
    DNS_MISMATCH,
    FAILED,
    ISSUED,
    ORDERING,
    PENDING,
    RATE_LIMITED,
    Backoff,
    DomainError,
    DomainRecord,
    OrderLimits,
    check_hostname,
    check_target,
    renewal_due,
)
from .mapfiles import write_atomically
from .runtime import HAProxyError

log = logging.getLogger("netagent.edge.domains")

STATE_FILE = "domains.json"
ACCOUNT_KEY = "account.key"


class DomainConflict(Exception):
    """The domain is mapped to another sandbox port (one owner; 409)."""


@dataclass
class AcmeSettings:
    directory_url: str
    edge_domain: str
    edge_addresses: frozenset[str]        # what a custom domain must resolve to (the edge's public IPs)
    resolver: str = ""                    # IP:PORT for the DNS check ("": the system's)
    ca_file: str = ""                     # trust for the ACME server's HTTPS ("": the system's)
    contact: str = ""                     # mailto: for the ACME account
    renew_before_s: float = 30 * 86400.0  # renew when the certificate expires sooner than this
    backoff: Backoff = field(default_factory=Backoff)
    limits: OrderLimits = field(default_factory=OrderLimits)
    tick_s: float = 1.0                   # how often due retries and renewals are looked for


class DomainManager:
    def __init__(self, settings: AcmeSettings, certs: CertRuntime, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.certs = certs
        self.clock = clock
        self.records: dict[str, DomainRecord] = {}
        self.orders_started = 0               # ACME orders begun (tests and metrics)
        self.orders_issued = 0
        self.orders_failed = 0
        self.passes = 0                       # times the worker looked for due work
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._state_path = Path(certs.certs_dir) / STATE_FILE
        self._client: acme.AcmeClient | None = None

    # the API's calls

    async def put(self, domain: str, sandbox_id: object, port: object) -> tuple[DomainRecord, bool]:
        """Map `domain` to a sandbox port: (its record, True if new). The same mapping
        again returns the record as it stands (no second order); another owner: conflict."""
        host = check_hostname(domain, self.settings.edge_domain)
        sid, port_n = check_target(sandbox_id, port)
        existing = self.records.get(host)
        if existing is not None:
            if (existing.sandbox_id, existing.port) != (sid, port_n):
                raise DomainConflict(f"{host} is mapped to sandbox {existing.sandbox_id} port {existing.port}; "
                                     "remove it first")
            return existing, False
        record = DomainRecord(host, sid, port_n, created_at=self.clock())
        self.records[host] = record       # taken before any await: a racing request sees this owner
        try:
            await self.certs.set_route(host, record.internal_host(self.settings.edge_domain))
        except HAProxyError:
            if self.records.get(host) is record:
                del self.records[host]
            raise
        self._save()
        self._wake.set()
        return record, True

    async def remove(self, domain: str) -> bool:
        """Unmap: the order in flight is cancelled; the route, the certificate (served
        and on disk) and the record go."""
        host = check_hostname(domain, self.settings.edge_domain)
        record = self.records.pop(host, None)
        if record is None:
            return False
        task = self._inflight.pop(host, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self.certs.clear_route(host)
            if record.not_after or os.path.exists(self._cert_file(host)):
                await self.certs.remove_cert(host)
        except HAProxyError:
            self.records[host] = record      # still mapped: a DELETE again finishes it
            raise
        self._save()
        return True

    def get(self, domain: str) -> DomainRecord | None:
        try:
            return self.records.get(check_hostname(domain, self.settings.edge_domain))
        except DomainError:
            return None

    # the worker

    async def run(self) -> None:
        self._load()
        try:     # domains.map on disk has them too; this covers a file older than the state
            for record in self.records.values():
                await self.certs.set_route(record.domain, record.internal_host(self.settings.edge_domain))
        except HAProxyError as exc:
            log.warning("custom domains: could not load the routes into haproxy: %s", exc)
        while True:
            self._start_due()
            self.passes += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.tick_s):
                    await self._wake.wait()
            self._wake.clear()

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start_due(self) -> None:
        now = self.clock()
        for host, record in self.records.items():
            if host in self._inflight:
                continue                 # one order in flight per domain
            retry = record.status in (PENDING, DNS_MISMATCH, FAILED, RATE_LIMITED) and record.next_attempt_at <= now
            renew = renewal_due(record, now, self.settings.renew_before_s) and record.next_attempt_at <= now
            if retry or renew:
                task = asyncio.create_task(self._attempt(record))
                self._inflight[host] = task
                task.add_done_callback(lambda _t, h=host: self._inflight.pop(h, None))

    async def _attempt(self, record: DomainRecord) -> None:
        renewal = record.status == ISSUED
        try:
            await self._check_and_order(record, renewal)
        except Exception as exc:   # a bug or a surprise: backed off like any failure, never a tight loop
            log.exception("custom domain %s: attempt failed", record.domain)
            self._failed(record, FAILED, f"internal error: {exc!r}"[:500], renewal)

    async def _check_and_order(self, record: DomainRecord, renewal: bool) -> None:
        ok, why = await dnscheck.points_here(record.domain, self.settings.resolver, self.settings.edge_addresses)
        if not ok:
            self._failed(record, DNS_MISMATCH, why, renewal)
            return
        wait, which = self.settings.limits.wait(record.domain, self.clock())
        if wait > 0:
            self._set(record, status=ISSUED if renewal else RATE_LIMITED, detail=f"rate limited: {which}",
                      next_attempt_at=self.clock() + wait)
            return
        self.settings.limits.take(record.domain, self.clock())
        self.orders_started += 1
        if renewal:
            self._set(record, renewing=True, detail="renewing")
        else:
            self._set(record, status=ORDERING, detail="")
        try:
            issued = await self._acme().issue(record.domain, self.certs.set_challenge, self.certs.clear_challenge)
            if self.records.get(record.domain) is not record:
                return                    # removed meanwhile
            # Shielded: a removal meanwhile must not cut HAProxy's one ssl cert transaction in
            # half; it waits for the install (CertRuntime's lock) and then takes it out.
            await asyncio.shield(self.certs.install_cert(record.domain, issued.chain_pem + issued.key_pem,
                                                         lambda: self.records.get(record.domain) is record))
        except (acme.AcmeError, HAProxyError, OSError, ValueError) as exc:
            log.warning("custom domain %s: certificate order failed: %s", record.domain, exc)
            self.orders_failed += 1
            self._failed(record, FAILED, str(exc)[:500], renewal)
            return
        self.orders_issued += 1
        self._set(record, status=ISSUED, detail="", attempts=0, next_attempt_at=0.0, renewing=False,
                  not_after=issued.not_after, issued_at=self.clock())
        log.info("custom domain %s: certificate installed, valid until %s", record.domain,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued.not_after)))

    def _failed(self, record: DomainRecord, status: str, why: str, renewal: bool) -> None:
        attempts = record.attempts + 1
        delay = self.settings.backoff.delay(attempts)
        if renewal:    # the old certificate is still served until it expires
            status, why = ISSUED, f"renewal failed: {why}"
        self._set(record, status=status, detail=why, attempts=attempts, renewing=False,
                  next_attempt_at=self.clock() + delay)

    def _set(self, record: DomainRecord, **changes: object) -> None:
        if self.records.get(record.domain) is not record:
            return
        for name, value in changes.items():
            setattr(record, name, value)
        self._save()

    def _acme(self) -> acme.AcmeClient:
        if self._client is None:
            s = self.settings
            self._client = acme.AcmeClient(s.directory_url, self._account_key(), s.ca_file, s.contact,
                                           poll_interval_s=0.2)
        return self._client

    def _account_key(self) -> EllipticCurvePrivateKey:
        path = Path(self.certs.certs_dir) / ACCOUNT_KEY
        if path.exists():
            return acme.load_key(path.read_bytes())
        key = acme.new_key()
        write_atomically({str(path): acme.key_pem(key)})
        path.chmod(0o600)
        return key

    def _cert_file(self, host: str) -> str:
        return str(Path(self.certs.certs_dir) / f"{host}.pem")

    def _save(self) -> None:
        doc = {"version": 1, "domains": [r.to_json() for r in self.records.values()]}
        write_atomically({str(self._state_path): json.dumps(doc, indent=1).encode()})
        self.certs.write_routes({r.domain: r.internal_host(self.settings.edge_domain)
                                 for r in self.records.values()})

    def _load(self) -> None:
        if not self._state_path.exists():
            return
        doc = json.loads(self._state_path.read_text())
        for item in doc.get("domains", []):
            record = DomainRecord.from_json(item)
            if record.status == ORDERING:       # the edge stopped mid-order: start again
                record.status = PENDING
            self.records[record.domain] = record


class DomainCollector:
    """Prometheus figures of the custom domains, read at scrape time (docs/metrics.md)."""

    def __init__(self, manager: DomainManager) -> None:
        self.manager = manager

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        m = self.manager
        by_status = GaugeMetricFamily("netagent_edge_custom_domains", "Custom domains by status.", labels=["status"])
        for status in (PENDING, DNS_MISMATCH, RATE_LIMITED, ORDERING, ISSUED, FAILED):
            by_status.add_metric([status], sum(1 for r in m.records.values() if r.status == status))
        yield by_status
        orders = CounterMetricFamily("netagent_edge_acme_orders", "ACME orders by outcome.", labels=["result"])
        orders.add_metric(["started"], m.orders_started)
        orders.add_metric(["issued"], m.orders_issued)
        orders.add_metric(["failed"], m.orders_failed)
        yield orders
        expiries = [r.not_after for r in m.records.values() if r.not_after]
        yield GaugeMetricFamily("netagent_edge_custom_domains_earliest_expiry_timestamp_seconds",
                                "Unix time the first custom-domain certificate expires (0: none issued).",
                                value=min(expiries, default=0.0))

"""Thin I/O for custom domains in a running HAProxy (runtime API, no reload) and on
disk (so a restarted HAProxy loads the same): certificates through the crt-list,
entries of acme.map and domains.map. Paths are domainconfig.py's."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from . import domainconfig
from .mapfiles import write_atomically
from .runtime import HAProxyError, HAProxyRuntime


def _check(command: str, reply: str, *ok: str) -> None:
    if not any(marker in reply for marker in ok):
        raise HAProxyError(f"haproxy refused {command.split(' <<')[0]!r}: {reply.strip()[:300]}")


class CertRuntime:
    """The custom domains' share of HAProxy: its own admin connection (the map
    control plane keeps the other), the certificates directory and the two maps."""

    def __init__(self, runtime: HAProxyRuntime, map_dir: str, certs_dir: str, tls_pem: str) -> None:
        self.runtime = runtime
        self.map_dir = map_dir
        self.certs_dir = certs_dir
        self.tls_pem = tls_pem
        # One admin connection answers in order, and HAProxy holds one ssl cert
        # transaction at a time: each operation here runs alone, on a connection of its
        # own (closed after it), so it reaches the process that owns the socket now (a kept
        # connection would still reach the old process after a reload).
        self._lock = asyncio.Lock()

    # certificates

    async def install_cert(self, domain: str, pem: bytes, wanted: Callable[[], bool] = lambda: True) -> None:
        """Write the PEM and the crt-list (a restart loads them), then load it into the
        running process: a new certificate is created, filled, committed and added to the
        crt-list; one HAProxy already has (a renewal, or loaded at start) is replaced.
        `wanted()` is asked under the lock: a domain removed while this waited is skipped."""
        async with self._lock:
            if not wanted():
                return
            try:
                await self._install_cert_locked(domain, pem)
            finally:
                await self.runtime.close()

    async def _install_cert_locked(self, domain: str, pem: bytes) -> None:
        path = domainconfig.cert_path(self.certs_dir, domain)
        write_atomically({path: pem})
        Path(path).chmod(0o600)
        self.write_crt_list()
        (reply,) = await self.runtime.commands([f"new ssl cert {path}\n"])
        fresh = "already exists" not in reply
        if fresh:
            _check("new ssl cert", reply, "New empty certificate store")
        text = pem.decode().strip("\n")
        set_reply, commit_reply = await self.runtime.commands([f"set ssl cert {path} <<\n{text}\n\n",
                                                               f"commit ssl cert {path}\n"])
        if "Success" not in commit_reply:    # HAProxy holds one transaction: never leave it open
            await self.runtime.commands([f"abort ssl cert {path}\n"])
        _check("set ssl cert", set_reply, "Transaction created", "Transaction updated")
        _check("commit ssl cert", commit_reply, "Success")
        if fresh:
            listing = domainconfig.crt_list(self.certs_dir)
            (reply,) = await self.runtime.commands([f"add ssl crt-list {listing} {path}\n"])
            _check("add ssl crt-list", reply, "Success")

    async def remove_cert(self, domain: str) -> None:
        """Out of the running process (crt-list entry, then the certificate), then off disk."""
        async with self._lock:
            try:
                await self._remove_cert_locked(domain)
            finally:
                await self.runtime.close()

    async def _remove_cert_locked(self, domain: str) -> None:
        path = domainconfig.cert_path(self.certs_dir, domain)
        listing = domainconfig.crt_list(self.certs_dir)
        del_list, del_cert = await self.runtime.commands([f"del ssl crt-list {listing} {path}\n",
                                                          f"del ssl cert {path}\n"])
        for command, reply in (("del ssl crt-list", del_list), ("del ssl cert", del_cert)):
            if "deleted" not in reply and "not found" not in reply.lower() and "doesn't exist" not in reply:
                raise HAProxyError(f"haproxy refused {command} {path}: {reply.strip()[:300]}")
        Path(path).unlink(missing_ok=True)
        self.write_crt_list()

    def write_crt_list(self) -> None:
        certs = [str(p) for p in Path(self.certs_dir).glob("*.pem") if str(p) != self.tls_pem]
        text = domainconfig.crt_list_text(self.tls_pem, certs)
        write_atomically({domainconfig.crt_list(self.certs_dir): text.encode()})

    # maps

    async def set_challenge(self, token: str, key_authorization: str) -> None:
        await self._map_set(domainconfig.acme_map(self.map_dir), token, key_authorization)

    async def clear_challenge(self, token: str) -> None:
        await self._map_del(domainconfig.acme_map(self.map_dir), token)

    async def set_route(self, domain: str, internal_host: str) -> None:
        await self._map_set(domainconfig.domains_map(self.map_dir), domain, internal_host)

    async def clear_route(self, domain: str) -> None:
        await self._map_del(domainconfig.domains_map(self.map_dir), domain)

    def write_routes(self, routes: dict[str, str]) -> None:
        write_atomically({domainconfig.domains_map(self.map_dir): domainconfig.domains_map_text(routes).encode()})

    async def _map_set(self, path: str, key: str, value: str) -> None:
        async with self._lock:
            try:
                await self._map_set_locked(path, key, value)
            finally:
                await self.runtime.close()

    async def _map_set_locked(self, path: str, key: str, value: str) -> None:
        (reply,) = await self.runtime.commands([f"set map {path} {key} {value}\n"])
        if reply.strip():     # not there yet
            (reply,) = await self.runtime.commands([f"add map {path} {key} {value}\n"])
            if reply.strip():
                raise HAProxyError(f"haproxy refused add map {path} {key}: {reply.strip()}")

    async def _map_del(self, path: str, key: str) -> None:
        async with self._lock:
            try:
                await self._map_del_locked(path, key)
            finally:
                await self.runtime.close()

    async def _map_del_locked(self, path: str, key: str) -> None:
        (reply,) = await self.runtime.commands([f"del map {path} {key}\n"])
        if reply.strip() and "not found" not in reply:
            raise HAProxyError(f"haproxy refused del map {path} {key}: {reply.strip()}")

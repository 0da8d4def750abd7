"""`netagent edge --haproxy-socket ...`: the control plane of the HAProxy edge, and
`--write-haproxy-config FILE`: render HAProxy's config, maps and error file."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..logs import setup_logging
from .haconfig import EdgeSettings
from .mapfiles import DEFAULT_INTERVAL_S
from .maps import DEFAULT_SHARDS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("netagent.edge")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HAProxy edge (docs/edge.md)")
    g.add_argument("--haproxy-socket", help="run the control plane: HAProxy's admin socket (level admin)")
    g.add_argument("--write-haproxy-config", metavar="FILE",
                   help="write HAProxy's config to FILE (and the maps and error file it loads), then exit")
    g.add_argument("--map-dir", default="/var/lib/netagent-edge/maps", help="where the shard maps live")
    g.add_argument("--errors-dir", default="/var/lib/netagent-edge/errors")
    g.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help="map shards (same in config and control)")
    g.add_argument("--http-listen", action="append", default=[], metavar="IP:PORT",
                   help="plain HTTP listener (repeatable; default 0.0.0.0:80)")
    g.add_argument("--https-listen", action="append", default=[], metavar="IP:PORT",
                   help="HTTPS listener (repeatable), HTTP/2 and HTTP/1.1 by ALPN")
    g.add_argument("--tls-pem", default="", help="certificate chain and key of *.DOMAIN in one PEM file")
    g.add_argument("--https-public-port", type=int, default=443, help="the port in redirects to https://")
    g.add_argument("--no-https-redirect", action="store_true", help="serve plain HTTP instead of 308 to HTTPS")
    g.add_argument("--token-header", default="X-Access-Token", help="header carrying a private port's token")
    g.add_argument("--token-cookie", default="netagent-access-token", help="cookie carrying the token")
    g.add_argument("--url-signing-key-file", help="key (>= 32 bytes) for signed URLs to private ports; "
                   "it is written into HAProxy's config, so keep that file private")
    g.add_argument("--threads", type=int, default=2, help="HAProxy threads")
    g.add_argument("--map-write-interval", type=float, default=DEFAULT_INTERVAL_S, metavar="S",
                   help="rewrite a changed shard's map file at most once per S seconds (how stale the files "
                        "a reloaded HAProxy loads may be; default %(default)s)")
    g.add_argument("--metrics-address", default="", metavar="HOST:PORT",
                   help="the control plane's Prometheus /metrics (sync state and lag; docs/metrics.md); off if unset")
    g.add_argument("--maxconn", type=maxconn_arg, default=0, metavar="auto|N",
                   help="HAProxy's connection limit; auto (default): sized by HAProxy from its fd limit")
    g.add_argument("--tcp-listen", action="append", default=[], metavar="IP:PORT",
                   help="raw TCP over TLS by SNI (repeatable; needs --tls-pem): docs/edge.md, \"Raw TCP\"")
    g.add_argument("--tcp-on-https", action="store_true",
                   help="serve ports exposed as tcp on the HTTPS listeners too, routed by SNI "
                        "(an internal hop for HTTPS): docs/edge.md, \"Raw TCP\"")
    w = p.add_argument_group("wake on request (docs/edge.md, \"Paused sandboxes\")")
    w.add_argument("--waker-listen", default="", metavar="IPv4:PORT",
                   help="the control plane's waker for paused sandboxes (same in config and control plane); "
                        "without it a paused sandbox is answered 503")
    w.add_argument("--wake-hook-url", help="the orchestrator's resume hook (POST, HMAC-signed body)")
    w.add_argument("--wake-hook-key-file", help="HMAC-SHA256 key (>= 32 bytes) signing the hook's body")
    w.add_argument("--wake-timeout", type=float, default=30.0,
                   help="seconds a request waits for its sandbox to be live again (default 30)")
    add_domain_arguments(p)


def add_domain_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("custom domains with ACME certificates (docs/edge.md, \"Custom domains\")")
    d.add_argument("--certs-dir", default="", metavar="DIR",
                   help="custom domains on: their certificates, crt-list and state (same in config and control plane)")
    d.add_argument("--domains-api", default="", metavar="IP:PORT", help="the control plane's custom-domain API")
    d.add_argument("--domains-api-token-file", help="bearer token the domain API requires")
    d.add_argument("--acme-directory", default="", metavar="URL", help="the ACME server's directory URL")
    d.add_argument("--acme-ca-file", default="", help="CA bundle for the ACME server's HTTPS (default: the system's)")
    d.add_argument("--acme-contact", default="", help="mailto: URL of the ACME account")
    d.add_argument("--acme-dns-resolver", default="", metavar="IP:PORT",
                   help="the resolver a custom domain is checked against (default: the system's)")
    d.add_argument("--public-address", action="append", default=[], metavar="IP",
                   help="an address of this edge a custom domain must resolve to (repeatable)")
    d.add_argument("--acme-renew-before", type=float, default=30.0, metavar="DAYS",
                   help="renew a certificate this many days before it expires (default 30)")
    d.add_argument("--acme-retry-base", type=float, default=30.0, metavar="S",
                   help="first retry after a failed DNS check or order; doubles per failure (default 30)")
    d.add_argument("--acme-retry-cap", type=float, default=3600.0, metavar="S",
                   help="longest retry wait (default 3600)")
    d.add_argument("--acme-orders-per-domain", type=int, default=5, help="orders per domain per hour (default 5)")
    d.add_argument("--acme-orders-per-edge", type=int, default=50, help="orders per edge per hour (default 50)")


def maxconn_arg(text: str) -> int:
    """'auto' is 0 (EdgeSettings: haproxy sizes it); else a positive count."""
    if text == "auto":
        return 0
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a positive number, got {text!r}")
    return int(text)


def settings_from(args: argparse.Namespace) -> EdgeSettings:
    admin = args.haproxy_socket or "/run/netagent-edge/haproxy.sock"
    return EdgeSettings(
        domain=args.domain.lower().rstrip("."), map_dir=args.map_dir, admin_socket=admin,
        errors_dir=args.errors_dir, http_listen=tuple(args.http_listen or ["0.0.0.0:80"]),
        https_listen=tuple(args.https_listen), tls_pem=args.tls_pem,
        redirect_to_https=not args.no_https_redirect, https_public_port=args.https_public_port,
        token_header=args.token_header, token_cookie=args.token_cookie, trust_forwarded=args.trust_forwarded,
        connect_timeout_s=args.connect_timeout, shards=args.shards, threads=args.threads, maxconn=args.maxconn,
        waker=args.waker_listen, tcp_listen=tuple(args.tcp_listen), certs_dir=args.certs_dir,
        tcp_on_https=args.tcp_on_https,
        url_signing_key=Path(args.url_signing_key_file).read_bytes().strip() if args.url_signing_key_file else b"")


async def control(args: argparse.Namespace) -> None:
    from ..metrics import serve_http
    from ..registry import open_registry
    from .control import EdgeControl
    from .feeds import open_feed
    from .metrics import EdgeMetrics
    from .runtime import HAProxyRuntime

    registry = open_registry(args.registry)
    feed = open_feed(registry)  # type: ignore[arg-type]
    runtime = HAProxyRuntime(args.haproxy_socket, args.map_dir)
    metrics = EdgeMetrics()
    edge = EdgeControl(feed, runtime, args.shards, map_write_interval_s=args.map_write_interval, metrics=metrics)
    http = None
    if args.metrics_address:
        host, _, port = args.metrics_address.rpartition(":")
        http = serve_http(metrics.registry, host, int(port))
        log.info("edge metrics on %s:%d", host, http.server_address[1])
    task = asyncio.create_task(edge.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("edge control plane: %s -> haproxy %s (%d shards)", args.registry, args.haproxy_socket, args.shards)
    waker = await start_waker(args, edge)
    domains = await start_domains(args, metrics.registry)
    try:
        await stop.wait()
    finally:
        if waker is not None:
            await waker.stop()
        if domains is not None:
            await domains()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await feed.close()
        await runtime.close()
        await registry.close()
        if http is not None:
            http.shutdown()
            http.server_close()


async def start_waker(args: argparse.Namespace, edge: object) -> object | None:
    """The waker, if --waker-listen: it reads the sandboxes' state from the control
    plane's mirror of what HAProxy was given."""
    if not args.waker_listen:
        return None
    from .wakehook import ResumeHook
    from .waker import Waker
    if not args.wake_hook_url or not args.wake_hook_key_file:
        raise SystemExit("netagent edge: --waker-listen needs --wake-hook-url and --wake-hook-key-file")
    hook = ResumeHook(args.wake_hook_url, Path(args.wake_hook_key_file).read_bytes().strip(), args.wake_timeout)
    def lookup(sid: str) -> dict[str, str] | None:    # by_sandbox is a new dict after each full sync
        return edge.mirror.by_sandbox.get(sid)  # type: ignore[attr-defined]
    waker = Waker(lookup, hook, args.wake_timeout)
    host, port = args.waker_listen.rsplit(":", 1)
    await waker.start(host, int(port))
    log.info("edge waker on %s, resume hook %s", args.waker_listen, args.wake_hook_url)
    return waker


async def start_domains(args: argparse.Namespace, metrics: CollectorRegistry) -> Callable[[], Awaitable[None]] | None:
    """The custom-domain manager and its API, if --domains-api; returns their stop."""
    if not args.domains_api:
        return None
    from .certruntime import CertRuntime
    from .domainapi import DomainApi
    from .domainmanager import AcmeSettings, DomainCollector, DomainManager
    from .domains import Backoff, OrderLimits
    if not (args.certs_dir and args.acme_directory and args.public_address and args.tls_pem):
        raise SystemExit("netagent edge: --domains-api needs --certs-dir, --tls-pem, --acme-directory "
                         "and --public-address")
    settings = AcmeSettings(
        directory_url=args.acme_directory, edge_domain=args.domain.lower().rstrip("."),
        edge_addresses=public_addresses(args.public_address), resolver=args.acme_dns_resolver,
        ca_file=args.acme_ca_file,
        contact=args.acme_contact, renew_before_s=args.acme_renew_before * 86400,
        backoff=Backoff(args.acme_retry_base, args.acme_retry_cap),
        limits=OrderLimits(args.acme_orders_per_domain, args.acme_orders_per_edge))
    from .runtime import HAProxyRuntime
    certs = CertRuntime(HAProxyRuntime(args.haproxy_socket, args.map_dir), args.map_dir, args.certs_dir, args.tls_pem)
    manager = DomainManager(settings, certs)
    metrics.register(DomainCollector(manager))  # type: ignore[arg-type]
    token = Path(args.domains_api_token_file).read_text().strip() if args.domains_api_token_file else ""
    api = DomainApi(manager, token)
    host, port = args.domains_api.rsplit(":", 1)
    await api.start(host, int(port))
    task = asyncio.create_task(manager.run())
    log.info("edge custom domains: API on %s, ACME %s", args.domains_api, args.acme_directory)

    async def stop() -> None:
        await api.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await manager.close()
        await certs.runtime.close()
    return stop


def public_addresses(texts: list[str]) -> frozenset[str]:
    """--public-address values in the form the DNS check compares (ipaddress's)."""
    import ipaddress
    try:
        return frozenset(str(ipaddress.ip_address(t.strip("[]"))) for t in texts)
    except ValueError as exc:
        raise SystemExit(f"netagent edge: --public-address: {exc}") from None


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_json)
    if args.write_haproxy_config:
        from .fdlimit import FdLimitError
        from .hafiles import write_haproxy_files
        try:
            path = write_haproxy_files(settings_from(args), args.write_haproxy_config)
        except FdLimitError as exc:
            raise SystemExit(f"netagent edge: {exc}") from None
        print(path)
        return 0
    if not 0 < args.map_write_interval <= 60:
        raise SystemExit("netagent edge: --map-write-interval must be in (0, 60] seconds")
    asyncio.run(control(args))
    return 0

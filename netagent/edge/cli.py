"""`netagent edge`: run the reference edge until SIGTERM/SIGINT."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from ..logs import LEVELS, setup_logging
from . import hacli
from .proxy import EdgeConfig, EdgeServer

log = logging.getLogger("netagent.edge")


def listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("edge", help="program a HAProxy edge from the registry (--haproxy-socket), or run "
                                    "the legacy Python HTTP/1.1 proxy (docs/edge.md)")
    p.add_argument("--registry", help="sqlite:///path.db or redis://host:port/db")
    p.add_argument("--domain", required=True, help="serve {port}-{sandboxId}.DOMAIN")
    p.add_argument("--listen", type=listen_address, default=("127.0.0.1", 8080), help="HOST:PORT (127.0.0.1:8080)")
    p.add_argument("--shared-host", help="a host name routed by X-Sandbox-Id and X-Sandbox-Port headers")
    p.add_argument("--connect-timeout", type=float, default=3.0, help="upstream connect timeout, seconds")
    p.add_argument("--trust-forwarded", action="store_true",
                   help="keep and extend incoming X-Forwarded-* (only behind a trusted proxy)")
    p.add_argument("--cache-ms", type=float, default=250.0,
                   help="reuse a registry answer for up to this many ms (0-250, default 250; 0: every request asks)")
    p.add_argument("--log-level", default="INFO", choices=LEVELS)
    p.add_argument("--log-json", action="store_true")
    hacli.add_arguments(p)


async def serve(args: argparse.Namespace) -> None:
    from ..registry import open_registry
    registry = open_registry(args.registry)
    await registry.connect()
    config = EdgeConfig(domain=args.domain, shared_host=args.shared_host, connect_timeout_s=args.connect_timeout,
                        trust_forwarded=args.trust_forwarded, cache_ttl_s=args.cache_ms / 1000)
    server = EdgeServer(registry, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        host, port = await server.start(*args.listen)
        log.info("edge listening on %s:%d for *.%s", host, port, config.domain)
        await stop.wait()
        log.info("edge stopping")
    finally:
        await server.stop()
        await registry.close()


def run(args: argparse.Namespace) -> int:
    if args.haproxy_socket or args.write_haproxy_config:
        if not args.write_haproxy_config and not args.registry:
            raise SystemExit("netagent edge: --haproxy-socket needs --registry")
        return hacli.run(args)
    if not args.registry:
        raise SystemExit("netagent edge: --registry is required")
    setup_logging(args.log_level, args.log_json)
    asyncio.run(serve(args))
    return 0

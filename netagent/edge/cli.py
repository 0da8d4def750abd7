"""`netagent edge`: the HAProxy edge's control plane (--haproxy-socket), or its
config (--write-haproxy-config FILE). docs/edge.md."""
from __future__ import annotations

import argparse

from ..logs import LEVELS
from . import hacli


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("edge", help="program a HAProxy edge from the registry (docs/edge.md)")
    p.add_argument("--registry", help="sqlite:///path.db or redis://host:port/db")
    p.add_argument("--domain", required=True, help="serve {port}-{sandboxId}.DOMAIN")
    p.add_argument("--connect-timeout", type=float, default=3.0, help="sandbox port connect timeout, seconds")
    p.add_argument("--trust-forwarded", action="store_true",
                   help="keep incoming X-Forwarded-* (only behind a trusted proxy)")
    p.add_argument("--log-level", default="INFO", choices=LEVELS)
    p.add_argument("--log-json", action="store_true")
    hacli.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.write_haproxy_config:
        return hacli.run(args)
    if not args.haproxy_socket:
        raise SystemExit("netagent edge: give --haproxy-socket PATH (run the control plane of HAProxy at that "
                         "admin socket) or --write-haproxy-config FILE; there is no built-in proxy any more "
                         "(docs/edge.md)")
    if not args.registry:
        raise SystemExit("netagent edge: --haproxy-socket needs --registry")
    return hacli.run(args)

"""The `netagent` command."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from . import config as config_mod
from .errors import ConfigError
from .logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="netagent", description="Networking and egress-policy agent for microVM sandboxes")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the agent")
    p_serve.add_argument("--config", help="TOML config file (NETAGENT_* env vars override it)")
    p_check = sub.add_parser("config", help="configuration tools")
    p_check.add_argument("action", choices=["check"])
    p_check.add_argument("file", nargs="?")
    from .operator.commands import add_parsers, guarded
    add_parsers(sub)
    from .edge import cli as edge_cli
    edge_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "edge":   # needs no agent config
        return edge_cli.run(args)

    path = getattr(args, "config", None) or getattr(args, "file", None) or config_mod.default_path()
    try:
        cfg = config_mod.load(path)
    except ConfigError as exc:
        print(f"netagent: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    if hasattr(args, "run"):
        return guarded(args.run, args, cfg)
    setup_logging(cfg.log_level, cfg.log_json)
    try:
        from .daemon import serve
        asyncio.run(serve(cfg, path))
    except ConfigError as exc:
        print(f"netagent: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

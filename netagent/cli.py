"""The `netagent` command. Parsing imports only argparse and the argument
tables; a command's code is imported once it is chosen, so `--help` and the
light commands (status, ls) start fast (docs/cli.md, "Start-up")."""
from __future__ import annotations

import argparse
import sys

EDGE_HELP = "program a HAProxy edge from the registry (docs/edge.md)"


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netagent", description="Networking and egress-policy agent for microVM sandboxes")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the agent")
    p_serve.add_argument("--config", help="TOML config file (NETAGENT_* env vars override it)")
    p_check = sub.add_parser("config", help="configuration tools")
    p_check.add_argument("action", choices=["check"])
    p_check.add_argument("file", nargs="?")
    from .operator.parsers import add_parsers
    add_parsers(sub)
    if _command_word(argv) == "edge":   # its arguments come with the edge's code
        from .edge import cli as edge_cli
        edge_cli.add_parser(sub)
    else:
        sub.add_parser("edge", help=EDGE_HELP, add_help=False)
    from .edge import domainscli
    domainscli.add_parser(sub)
    return parser


def _command_word(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if args.command == "edge":   # needs no agent config
        from .edge import cli as edge_cli
        return edge_cli.run(args)
    if args.command == "domains":   # talks to an edge, not to the agent
        from .edge import domainscli
        return domainscli.run(args)

    from . import configfile
    from .errors import ConfigError
    path = getattr(args, "config", None) or getattr(args, "file", None) or configfile.default_path()
    if getattr(args, "run", None):
        return _operator(args, path)
    from . import config as config_mod
    try:
        cfg = config_mod.load(path)
    except ConfigError as exc:
        print(f"netagent: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        import json
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    import asyncio

    from .daemon import serve
    from .logs import setup_logging
    setup_logging(cfg.log_level, cfg.log_json)
    try:
        asyncio.run(serve(cfg, path))
    except ConfigError as exc:
        print(f"netagent: {exc}", file=sys.stderr)
        return 2
    return 0


def _operator(args: argparse.Namespace, path: str | None) -> int:
    """An operator command: the light ones read only the socket, prefix and netns
    (quick.ClientSettings); the rest validate the whole config first."""
    from .errors import ConfigError
    from .operator.parsers import LIGHT
    try:
        if args.command in LIGHT:
            from .operator.quick import ClientSettings
            settings = ClientSettings.read(path)
        else:
            from . import config as config_mod
            settings = config_mod.load(path)   # type: ignore[assignment]
    except ConfigError as exc:
        print(f"netagent: {exc}", file=sys.stderr)
        return 2
    from .operator import commands
    return commands.guarded(getattr(commands, args.run), args, settings)


if __name__ == "__main__":
    sys.exit(main())

"""`netagent rules` and `netagent secrets` (request interception, issue #23).
A secret's value is read from stdin (never an argument: it would be in the
process list and shell history) and never printed: only names are."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .render import EXIT_OK, emit, pairs

if TYPE_CHECKING:
    from ..client import Client
    from ..config import Config


def rules(args: argparse.Namespace, config: Config, c: Client) -> int:
    if args.action == "set":
        with open(args.file) if args.file != "-" else sys.stdin as f:
            data = json.load(f)
        got = c.set_request_rules(args.sandbox, data["rules"] if isinstance(data, dict) else data)
    else:
        got = c.get_request_rules(args.sandbox)
    from .commands import to_dict
    d = to_dict(got)
    rows = {r.id: f"{r.action} {r.domain}{r.path} ports {','.join(map(str, r.ports))}"
            + (f" methods {','.join(r.methods)}" if r.methods else "")
            + "".join(f"; {t.op} {t.header}" for t in r.transforms) for r in got.rules}
    emit(d, args.json, pairs(rows or {"rules": "none"}))
    return EXIT_OK


def secrets(args: argparse.Namespace, config: Config, c: Client) -> int:
    if args.action == "set":
        value = sys.stdin.readline().rstrip("\n")
        names = c.set_secret(args.sandbox, args.name, value)
    elif args.action == "delete":
        c.delete_secret(args.sandbox, args.name)
        names = c.list_secrets(args.sandbox)
    else:
        names = c.list_secrets(args.sandbox)
    emit({"sandbox_id": args.sandbox, "names": names}, args.json, pairs({"secrets": ", ".join(names) or "none"}))
    return EXIT_OK


def intercept_ca(args: argparse.Namespace, config: Config, c: Client) -> int:
    sys.stdout.write(c.intercept_ca())
    return EXIT_OK

"""`netagent domains`: the edge's custom-domain API from a shell (docs/edge.md,
"Custom domains"). A thin HTTP client: list, show, add, rm. The parser is built
for every `netagent` command, so the HTTP and JSON modules load only when it runs."""
from __future__ import annotations

import argparse
import sys
import time

HELP = "custom domains of an edge: list, show, add, rm (its --domains-api; docs/edge.md)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("domains", help=HELP)
    p.add_argument("--api", default="127.0.0.1:8444", metavar="HOST:PORT", help="the edge's --domains-api")
    p.add_argument("--token-file", help="the bearer token (the edge's --domains-api-token-file)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p.add_argument("action", choices=["list", "show", "add", "rm"])
    p.add_argument("name", nargs="?", help="the custom domain (show, add, rm)")
    p.add_argument("sandbox", nargs="?", help="add: the sandbox id")
    p.add_argument("port", nargs="?", type=int, help="add: the sandbox port")


def run(args: argparse.Namespace) -> int:
    import json
    if args.action != "list" and not args.name:
        print(f"netagent domains {args.action}: a domain name is required", file=sys.stderr)
        return 2
    if args.action == "add" and (not args.sandbox or not args.port):
        print("netagent domains add NAME SANDBOX PORT", file=sys.stderr)
        return 2
    method, path, body = {
        "list": ("GET", "", None),
        "show": ("GET", f"/{args.name}", None),
        "add": ("PUT", f"/{args.name}", {"sandboxId": args.sandbox, "port": args.port}),
        "rm": ("DELETE", f"/{args.name}", None),
    }[args.action]
    token = open(args.token_file).read().strip() if args.token_file else ""
    try:
        status, doc = _call(args.api, method, path, body, token)
    except OSError as exc:
        print(f"netagent domains: the edge's API at {args.api}: {exc}", file=sys.stderr)
        return 2
    if status >= 400:
        print(f"netagent domains: {status} {doc.get('message', '')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.action == "list":
        _table(doc.get("domains", []))
    elif args.action == "rm":
        print(f"{args.name} removed")
    else:
        _record(doc)
    return 0


def _call(api: str, method: str, path: str, body: object | None, token: str) -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://{api}/v1/domains{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw.startswith(b"{") else {"message": raw.decode(errors="replace")}


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t)) if t else "-"


def _table(records: list[dict]) -> None:
    print(f"{'DOMAIN':<32} {'TARGET':<24} {'STATUS':<13} {'NOT AFTER':<21} DETAIL")
    for r in records:
        target = f"{r['sandboxId']}:{r['port']}"
        print(f"{r['domain']:<32} {target:<24} {r['status']:<13} {_when(r.get('notAfter')):<21} {r.get('detail', '')}")


def _record(r: dict) -> None:
    for label, value in (("domain", r["domain"]), ("target", f"{r['sandboxId']} port {r['port']}"),
                         ("status", r["status"] + (" (renewing)" if r.get("renewing") else "")),
                         ("detail", r.get("detail") or "-"), ("attempts", r.get("attempts", 0)),
                         ("next attempt", _when(r.get("nextAttemptAt"))), ("not after", _when(r.get("notAfter"))),
                         ("issued", _when(r.get("issuedAt")))):
        print(f"{label + ':':<14} {value}")

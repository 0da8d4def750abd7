"""Reading back what the agent put in the kernel (tests only)."""
from __future__ import annotations

import json

from tests.testbed import sh


def elements(ns: str, table: str, name: str) -> list:
    kind = "map" if name in ("egress_mode", "port_dnat", "slot_mark", "slot_mark_in") else "set"
    out = sh.run("nft", "-j", "list", kind, "inet", table, name, ns=ns).stdout
    for obj in json.loads(out)["nftables"]:
        body = obj.get(kind)
        if body:
            return body.get("elem", [])
    return []


def conntrack_count(ns: str, *filters: str) -> int:
    res = sh.run("conntrack", "-L", *filters, ns=ns, check=False)
    return len([line for line in res.stdout.splitlines() if line.strip()])

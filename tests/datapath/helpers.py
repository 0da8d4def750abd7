"""Reading back what the agent put in the kernel (tests only)."""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from tests.conftest import require_datapath_prereqs
from tests.testbed import sh


@contextlib.contextmanager
def scratch_netns(stem: str) -> Iterator[str]:
    """An empty netns of the test's own (named stem + pid), removed even on failure."""
    require_datapath_prereqs()
    ns = f"{stem}{os.getpid():x}"
    sh.ip("netns", "add", ns)
    try:
        yield ns
    finally:
        sh.ip("netns", "del", ns, check=False)


def sandbox_elements(ns: str, table: str, sandbox_ip: str) -> dict[str, list]:
    """Every per-sandbox element keyed by this sandbox IP, by set."""
    out = {}
    for name in ("egress_open", "egress_blocked", "allow_net", "allow_port", "deny_net", "deny_port"):
        found = [e for e in elements(ns, table, name) if sandbox_ip in json.dumps(e)]
        out[name] = sorted(json.dumps(e, sort_keys=True) for e in found)
    return out


def elements(ns: str, table: str, name: str) -> list:
    kind = "map" if name in ("port_dnat", "slot_mark", "slot_mark_in", "egress_snat") else "set"
    out = sh.run("nft", "-j", "list", kind, "inet", table, name, ns=ns).stdout
    for obj in json.loads(out)["nftables"]:
        body = obj.get(kind)
        if body:
            return body.get("elem", [])
    return []


def egress_ips(ns: str, table: str) -> list[str]:
    """Sandbox IPs with an egress mode (in egress_open or egress_blocked)."""
    return elements(ns, table, "egress_open") + elements(ns, table, "egress_blocked")


def counter_packets(ns: str, table: str, name: str) -> int:
    out = sh.run("nft", "-j", "list", "counter", "inet", table, name, ns=ns).stdout
    return next(o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o)


def conntrack_count(ns: str, *filters: str) -> int:
    res = sh.run("conntrack", "-L", *filters, ns=ns, check=False)
    return len([line for line in res.stdout.splitlines() if line.strip()])


# Filled by the packet path (caps, the deny-log limiter) or by DNS answers
# (fqdn_ips): not state, so no repair restores them. nft 1.0.6's JSON leaves
# out the "dynamic" flag, hence names rather than flags.
NOT_STATE = {"conn_count", "conn_rate", "deny_log_rate", "fqdn_ips"}


def _without_counter(e):  # type: ignore[no-untyped-def]
    """An element as state: the counts of a usage counter element are not."""
    if isinstance(e, dict) and "elem" in e and "counter" in e["elem"]:
        return e["elem"]["val"]
    return e


def table_elements(ns: str, table: str) -> dict[str, list[str]]:
    """Every set and map of the table (but NOT_STATE) with its elements (without
    their counters)."""
    out = sh.run("nft", "-j", "list", "table", "inet", table, ns=ns).stdout
    found = {}
    for obj in json.loads(out)["nftables"]:
        body = obj.get("set") or obj.get("map")
        if body and body["name"] not in NOT_STATE:
            found[body["name"]] = sorted(json.dumps(_without_counter(e), sort_keys=True) for e in body.get("elem", []))
    return found

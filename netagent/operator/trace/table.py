"""The temporary nft table `inet <prefix>_trace_<pid>` that a trace adds to the
host netns: it turns tracing on for one crafted packet only, and drops that
packet after the agent's rules judged it (postrouting 500: after srcnat,
before conntrack confirms; input 500: before any socket sees it), so it never
leaves the host, reaches a guest or leaves a conntrack entry behind."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from ...firewall.nft import Nft, connect

COMMENT = "netagent trace"


@dataclass(frozen=True)
class Probe:
    """The crafted packet, as it arrives in the host netns."""
    iif: str
    saddr: str
    daddr: str
    proto: str              # tcp | udp | icmp
    ip_id: int
    sport: int | None = None
    dport: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def name(prefix: str, pid: int | None = None) -> str:
    return f"{prefix}_trace_{pid or os.getpid()}"


def ruleset(table: str, probe: Probe, veth: str | None = None) -> str:
    """The table's text. The comment names the temporary veth (if any) so a
    clean-up after a crash knows what else to remove."""
    p = probe
    mark = (f'iifname "{p.iif}" ip saddr {p.saddr} ip daddr {p.daddr} ip id {p.ip_id} '
            f"meta l4proto {p.proto}" + (f" th dport {p.dport}" if p.dport is not None else ""))
    # By the ct original tuple (survives masquerade and DNAT), and by the
    # packet itself in case it has no conntrack entry.
    stops = (f"ip id {p.ip_id} ct original ip saddr {p.saddr} ct original ip daddr {p.daddr} drop\n"
             f"ip id {p.ip_id} ip saddr {p.saddr} ip daddr {p.daddr} drop")
    comment = f"{COMMENT} pid={os.getpid()}" + (f" veth={veth}" if veth else "")
    return f"""table inet {table} {{
	comment "{comment}"
	chain trace_on {{
		type filter hook prerouting priority -350; policy accept;
		{mark} meta nftrace set 1
	}}
	chain stop_forwarded {{
		type filter hook postrouting priority 500; policy accept;
		{stops}
	}}
	chain stop_local {{
		type filter hook input priority 500; policy accept;
		{stops}
	}}
}}
"""


def create(table: str, probe: Probe, veth: str | None = None) -> None:
    """In the calling thread's netns."""
    connect().run(ruleset(table, probe, veth))


def delete(table: str) -> None:
    connect().delete_table(table)


def stale(prefix: str) -> list[dict[str, Any]]:
    """Trace tables (and their veths) whose process is gone, in the calling
    thread's netns: [{"kind": "nft table"|"link", "name": ...}]."""
    pattern = re.compile(rf"^{re.escape(prefix)}_trace_(\d+)$")
    nft = connect()
    found: list[dict[str, Any]] = []
    for t in nft.tables("inet"):
        if not (m := pattern.match(t["name"])) or _alive(int(m.group(1))):
            continue
        found.append({"kind": "nft table", "name": f"inet {t['name']}"})
        comment = t.get("comment", "")
        if not comment:  # older nft prints the comment only in the table listing
            comment = _comment(nft, t["name"])
        if m2 := re.search(r"veth=(\S+)", comment):
            found.append({"kind": "link", "name": m2.group(1)})
    return found


def remove_tables(objects: list[dict[str, Any]]) -> None:
    for o in objects:
        if o["kind"] == "nft table":
            delete(o["name"].removeprefix("inet "))


def _comment(nft: Nft, table: str) -> str:
    out = nft.table_text(table)
    m = re.search(r'comment "([^"]*)"', out) if out else None
    return m.group(1) if m else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

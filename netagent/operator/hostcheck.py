"""`netagent gc` and `netagent doctor`: leaked objects and host prerequisites."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from .. import netns
from ..addressing import AddressPlan
from ..config import Config
from .kernel import in_netns


def known_slots(config: Config) -> set[int]:
    """Slot indexes in the agent's state (read-only; WAL lets the agent write on)."""
    db = Path(config.state_dir) / "state.db"
    if not db.exists():
        return set()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute("SELECT idx FROM slots")}


def leaked(config: Config) -> list[dict[str, Any]]:
    """netns and host links with our prefix that no slot in state owns."""
    return ours(config, known_slots(config))


def ours(config: Config, known: set[int] = frozenset()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    """netns and host links with our prefix, except those of slots in `known`."""
    plan = AddressPlan(config)
    found = [{"kind": "netns", "name": n} for n in netns.list_names(f"{plan.prefix}-")
             if (i := plan.index_of_netns(n)) is not None and i not in known]

    def links() -> list[str]:
        with IPRoute() as ipr:
            return [link.get("ifname") for link in ipr.get_links()]
    found += [{"kind": "link", "name": n} for n in in_netns(config.host_netns, links)
              if (i := plan.index_of_host_veth(n)) is not None and i not in known]
    return found


def remove(config: Config, objects: list[dict[str, Any]]) -> None:
    def delete_links() -> None:
        with IPRoute() as ipr:
            for o in objects:
                if o["kind"] == "link" and (idx := ipr.link_lookup(ifname=o["name"])):
                    ipr.link("del", index=idx[0])
    in_netns(config.host_netns, delete_links)
    for o in objects:
        if o["kind"] == "netns":
            netns.delete(o["name"])


def doctor(config: Config) -> list[dict[str, str]]:
    """Each check: name, ok|fail|warn, detail, and the fix when it fails."""
    checks: list[dict[str, str]] = []

    def add(name: str, status: str, detail: str, fix: str = "") -> None:
        checks.append({"check": name, "status": status, "detail": detail, "fix": fix})

    add(*_tun())
    add(*in_netns(config.host_netns, lambda: _nftables(config)))
    add(*in_netns(config.host_netns, _forwarding))
    add(*in_netns(config.host_netns, lambda: _uplink(config)))
    add(*in_netns(config.host_netns, _conflicting_firewall))
    add(*in_netns(config.host_netns, lambda: _port_range(config)))
    return checks


def _tun() -> tuple[str, str, str, str]:
    ok = os.path.exists("/dev/net/tun")
    return ("/dev/net/tun", "ok" if ok else "fail", "present" if ok else "missing",
            "" if ok else "load the tun module: modprobe tun")


def _nftables(config: Config) -> tuple[str, str, str, str]:
    try:
        from ..firewall.nft import connect
        from ..firewall.table_probe import table_exists
        version = connect().works()
        loaded = table_exists("inet", config.prefix)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return ("nf_tables", "fail", str(exc), "apt-get install nftables python3-nftables; modprobe nf_tables")
    if not version:
        return ("nf_tables", "fail", "the kernel refused an nft command", "modprobe nf_tables")
    return ("nf_tables", "ok" if loaded else "warn",
            f"kernel nf_tables works; table inet {config.prefix} {'loaded' if loaded else 'not loaded'}",
            "" if loaded else "start the agent (it loads the table)")


def _forwarding() -> tuple[str, str, str, str]:
    value = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    ok = value == "1"
    return ("ip_forward", "ok" if ok else "fail", f"net.ipv4.ip_forward = {value}",
            "" if ok else "the agent sets it at start; something reset it: sysctl -w net.ipv4.ip_forward=1")


def _uplink(config: Config) -> tuple[str, str, str, str]:
    with IPRoute() as ipr:
        routes = ipr.get_default_routes(family=2)
        name = config.uplink or (ipr.get_links(routes[0].get("oif"))[0].get("ifname") if routes else None)
        if not name or not ipr.link_lookup(ifname=name):
            return ("uplink", "fail", f"no uplink ({name or 'no default route'})",
                    "set `uplink` in the config or add a default route")
        state = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0].get("state")
    return ("uplink", "ok" if state == "up" else "fail", f"{name} is {state}", "" if state == "up" else
            f"ip link set {name} up")


def _conflicting_firewall() -> tuple[str, str, str, str]:
    from ..firewall.nft import connect
    chains = connect().chains()
    problems = [f"{c['family']} {c['table']} {c['name']} policy drop" for c in chains
                if c.get("hook") == "forward" and c.get("policy") == "drop"]
    problems += [f"{c['family']} {c['table']} DOCKER chains" for c in chains if c["name"] == "DOCKER"][:1]
    if os.path.exists("/run/firewalld"):
        problems.append("firewalld is running")
    if not problems:
        return ("conflicting firewall", "ok", "no forward DROP policy, Docker chains or firewalld", "")
    return ("conflicting firewall", "warn", "; ".join(problems),
            "another table can still drop sandbox traffic our table accepts: accept the sandbox veths "
            "(nav*) there, or make its forward policy accept")


def _port_range(config: Config) -> tuple[str, str, str, str]:
    lo, hi = config.host_port_range
    busy = set()
    for path in ("/proc/net/tcp", "/proc/net/udp"):
        for line in Path(path).read_text().splitlines()[1:]:
            port = int(line.split()[1].split(":")[1], 16)
            if lo <= port <= hi and (path.endswith("udp") or line.split()[3] == "0A"):
                busy.add(port)
    if not busy:
        return ("host port range", "ok", f"{lo}-{hi} has no listeners", "")
    return ("host port range", "warn", f"{len(busy)} port(s) in {lo}-{hi} have listeners: "
            f"{', '.join(map(str, sorted(busy)[:5]))}", "move host_port_range, or those services")

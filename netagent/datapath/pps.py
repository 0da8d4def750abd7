"""Per-sandbox packet-rate limits: rules/pps.nft, a table of its own in the
slot's netns, policing what the guest sends (iifname tap) and receives
(oifname tap) on the slot's forward hook. Outside the host table: nothing of
it goes through the committer or the host ruleset repair. The pure part
renders the one transaction that replaces the table (or only deletes it, for
no packet-rate limit); `apply` runs it on the calling thread, which must be
inside the slot's netns."""
from __future__ import annotations

import functools
import re
import socket

from ..firewall import table_probe
from ..firewall.nft import connect
from ..firewall.ruleset import read_rules
from ..models import Limits

RULES = "pps.nft"
TABLE = "netagent_pps"
MIN_BURST = 10
NETLINK_NETFILTER = 12
# "iifname $tap limit rate over 1000/second burst 100 packets ..." (egress), "oifname ..." (ingress)
_RULE = r"^(\s*{side} \$tap limit rate over )\d+(/second burst )\d+( packets .*\n)"


def default_burst(pps: int) -> int:
    """Pure: a tenth of a second of the rate, at least MIN_BURST packets."""
    return max(pps // 10, MIN_BURST)


def burst_of(limits: Limits, pps: int) -> int:
    return limits.burst_packets or default_burst(pps)


def table_script(source: str, tap: str, limits: Limits) -> str:
    """Pure: the transaction that leaves exactly `limits`' packet-rate table in
    the slot (create-if-missing then delete, so it never fails on absence)."""
    script = f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n"
    if limits.egress_pps is None and limits.ingress_pps is None:
        return script
    text = source
    for side, pps in (("iifname", limits.egress_pps), ("oifname", limits.ingress_pps)):
        pattern = _RULE.format(side=side)
        replacement = "" if pps is None else rf"\g<1>{pps}\g<2>{burst_of(limits, pps)}\g<3>"
        text, n = re.subn(pattern, replacement, text, flags=re.M)
        if n != 1:
            raise ValueError(f"{RULES} must contain exactly one {side} $tap limit rule")
    return script + f'define tap = "{tap}"\n' + text


@functools.cache
def _source() -> str:
    return read_rules(RULES)


def apply(tap: str, limits: Limits) -> None:
    """In the calling thread's netns (the slot's): one transaction. No packet-rate
    limit and no table (every clean of a released slot, most sandboxes): only a
    GETTABLE, no transaction (a libnftables one costs 7-20 ms, mostly closing
    its socket after the commit, firewall/nlsock.py)."""
    if limits.egress_pps is None and limits.ingress_pps is None and not _table_exists():
        return
    connect().run(table_script(_source(), tap, limits))


def _table_exists() -> bool:
    """A socket of its own: the thread is only visiting this netns (nlsock's
    per-thread socket belongs to the thread's home netns)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(5)
        sock.sendto(table_probe.request("ip", TABLE), (0, 0))
        while (found := table_probe.lookup(sock.recv(65536))) is None:
            pass
        return found[0]

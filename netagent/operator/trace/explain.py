"""Turn `nft monitor trace` lines into a path and a verdict in plain words.
Pure (no kernel access): the facts it needs are looked up beforehand."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

ACCOUNTING_CHAINS = "usage_"
_LINE = re.compile(r"^trace id (?P<id>\w+) (?P<family>\w+) (?P<table>\S+) (?P<chain>\S+) "
                   r"(?:packet: (?P<packet>.*)|rule (?P<rule>.*) \(verdict (?P<rv>[^)]*)\)"
                   r"|verdict (?P<verdict>.*)|policy (?P<policy>\S+))\s*$")
_COUNTER = re.compile(r"\s*counter packets \d+ bytes \d+")
_NAMED = re.compile(r'\bname "?(drop_\w+)')
_OIF = re.compile(r'\boif "([^"]+)"')

# What each named drop counter of rules/netagent.nft means.
DROP_REASONS = {
    "drop_ipv6": "IPv6 (sandboxes are IPv4 only)",
    "drop_spoof": "source address is not this sandbox's",
    "drop_sandbox": "another sandbox (sandbox-to-sandbox traffic is never forwarded)",
    "drop_smtp": "SMTP (tcp/25) is never allowed",
    "drop_dns_bypass": "DNS to a resolver other than the agent's proxy (the sandbox has a domain allowlist)",
    "drop_dns_rate": "more DNS packets per second than the resolver takes from one sandbox (dns_query_rate)",
    "drop_unallocated": "the sandbox is not allocated",
    "drop_to_host": "to the host itself (only replies and the DNS proxy port are allowed)",
    "drop_to_sandbox": "to a sandbox without an exposed port or an established flow",
    "drop_dead_flow": "a flow of a released sandbox, or one its narrowed policy ended (its ct mark is not live)",
    "drop_egress_blocked": "internet off",
    "drop_not_uplink": "not out of an uplink",
    "drop_conn_limit": "too many concurrent connections (conn_limit)",
    "drop_conn_rate": "too many new connections per second (new_conn_rate)",
    "drop_quic": "QUIC (udp/443) to a DNS-admitted address of a domain-allowlisted sandbox (first_payload.block_quic)",
    "drop_first_payload_unchecked": "a checked flow's packet before its first payload was judged (no queue reader)",
}


@dataclass(frozen=True)
class Step:
    """One trace event: a packet dump, a rule that matched, or a chain's end."""
    family: str
    table: str
    chain: str
    kind: str           # packet | rule | verdict | policy
    text: str = ""      # the packet fields or the rule
    verdict: str = ""   # accept, drop, continue, jump X, return ...

    def to_dict(self) -> dict[str, str]:
        return {"family": self.family, "table": self.table, "chain": self.chain, "kind": self.kind,
                "text": self.text, "verdict": self.verdict}


@dataclass
class Facts:
    """What the words need that the trace does not say, looked up before it."""
    table: str                          # the agent's table (its prefix)
    trace_table: str
    daddr: str
    proto: str
    port: int | None = None
    always_deny: str | None = None      # the always_deny interval holding daddr
    always_allow: str | None = None
    allow_entry: str | None = None      # the allow_out entry matching daddr[:port]
    deny_entry: str | None = None
    uplink_addresses: list[str] = field(default_factory=list)
    dnat: dict[str, Any] | None = None  # sandbox, sandbox_ip, guest_ip, guest_port (ingress)


@dataclass
class Outcome:
    verdict: str        # accepted | dropped | to-host | unknown
    words: str          # "dropped: always-deny 169.254.0.0/16"
    out_interface: str | None = None


def parse(lines: list[str]) -> dict[str, list[Step]]:
    """Trace lines -> steps, by trace id (one id per packet)."""
    traces: dict[str, list[Step]] = {}
    for line in lines:
        m = _LINE.match(line.strip())
        if not m:
            continue
        g = m.groupdict()
        if g["packet"] is not None:
            step = Step(g["family"], g["table"], g["chain"], "packet", g["packet"].strip())
        elif g["rule"] is not None:
            step = Step(g["family"], g["table"], g["chain"], "rule", _COUNTER.sub("", g["rule"]).strip(), g["rv"])
        elif g["verdict"] is not None:
            step = Step(g["family"], g["table"], g["chain"], "verdict", verdict=g["verdict"].strip())
        else:
            step = Step(g["family"], g["table"], g["chain"], "policy", verdict=g["policy"])
        traces.setdefault(g["id"], []).append(step)
    return traces


def ours(traces: dict[str, list[Step]], trace_table: str) -> list[Step]:
    """The steps of the packet our trace table marked."""
    for steps in traces.values():
        if any(s.table == trace_table and s.kind == "rule" and "nftrace" in s.text for s in steps):
            return steps
    return []


def path(steps: list[Step]) -> list[str]:
    """One line per rule that matched or chain that ended (packet dumps left out)."""
    out = []
    for s in steps:
        where = f"{s.family} {s.table} {s.chain}"
        if s.kind == "rule":
            out.append(f"{where}: {s.text} -> {s.verdict}")
        elif s.kind in ("policy", "verdict"):
            out.append(f"{where}: {s.kind} {s.verdict}")
    return out


def explain(steps: list[Step], facts: Facts) -> Outcome:
    if not steps:
        return Outcome("unknown", "no trace: the packet was not seen in the host netns")
    mine = [s for s in steps if s.table != facts.trace_table]
    stop = next((s for s in steps if s.table == facts.trace_table and s.kind == "rule"
                 and s.verdict == "drop"), None)
    if stop is None:
        return _dropped(mine, facts)
    oif = _interface(steps, stop.chain, _OIF)
    if stop.chain == "stop_local":
        return _to_host(mine, facts)
    return _forwarded(mine, facts, oif)


def _dropped(steps: list[Step], facts: Facts) -> Outcome:
    drop = next((s for s in reversed(steps) if s.verdict == "drop"), None)
    if drop is None:
        last = steps[-1] if steps else None
        where = f" after {last.family} {last.table} {last.chain}" if last else ""
        return Outcome("dropped", f"dropped outside nftables{where} (no route, or rp_filter)")
    if drop.kind == "policy":
        return Outcome("dropped", f"dropped: policy drop of chain {drop.family} {drop.table} {drop.chain}")
    if drop.table != facts.table:
        return Outcome("dropped", f"dropped: rule `{drop.text}` in {drop.family} {drop.table} {drop.chain}")
    name = m.group(1) if (m := _NAMED.search(drop.text)) else None
    if name == "drop_always_deny":
        return Outcome("dropped", f"dropped: always-deny {facts.always_deny or facts.daddr}")
    if name == "drop_policy_deny":
        return Outcome("dropped", f"dropped: policy deny_out {facts.deny_entry or facts.daddr}")
    if name in DROP_REASONS:
        return Outcome("dropped", f"dropped: {DROP_REASONS[name]}")
    return Outcome("dropped", f"dropped: rule `{drop.text}` in {drop.chain}")


def _forwarded(steps: list[Step], facts: Facts, oif: str | None) -> Outcome:
    dnat = any(s.kind == "rule" and "dnat" in s.text and s.verdict == "accept" for s in steps)
    masq = any(s.kind == "rule" and "masquerade" in s.text and s.verdict == "accept" for s in steps)
    if dnat and facts.dnat:
        d = facts.dnat
        return Outcome("accepted", f"accepted: DNAT to sandbox {d['sandbox']} guest port {d['guest_port']} "
                                   f"({d['sandbox_ip']}, guest {d['guest_ip']}) via {oif}", oif)
    reason = _accept_reason(steps, facts)
    via = f", masqueraded via {oif}" if masq else f", out of {oif}"
    if masq and facts.uplink_addresses:
        via += f" (as {', '.join(facts.uplink_addresses)})"
    return Outcome("accepted", f"accepted: {reason}{via}", oif)


def _decides(s: Step) -> bool:
    """Not an accounting chain's rule: usage_* chains count what the filters
    already accepted (rules/netagent.nft), they decide nothing."""
    return not s.chain.startswith(ACCOUNTING_CHAINS)


def _accept_reason(steps: list[Step], facts: Facts) -> str:
    rules = [s for s in steps if s.kind == "rule" and s.table == facts.table and _decides(s)]
    accept = next((s for s in reversed(rules) if s.verdict == "accept" and "nat" not in s.chain
                   and "masquerade" not in s.text and "dnat" not in s.text), None)
    always_allow = any("@always_allow" in s.text for s in rules)
    prefix = f"always-allow {facts.always_allow or facts.daddr}, " if always_allow else ""
    if accept is None:
        return prefix + "no rule of ours decided (the chain policy accepts)"
    if "@allow_net" in accept.text or "@allow_port" in accept.text:
        return prefix + f"allow_out {facts.allow_entry or facts.daddr}"
    if "@fqdn_ips" in accept.text:
        return prefix + f"allowed domain (resolved IP {facts.daddr})"
    if accept.chain == "mode_open":
        return prefix + "internet on"
    if "ct status dnat" in accept.text:
        return prefix + "DNAT (exposed port)"
    return prefix + f"rule `{accept.text}` in {accept.chain}"


def _to_host(steps: list[Step], facts: Facts) -> Outcome:
    if facts.dnat is None and facts.port is not None and not any(s.chain == "sandbox_to_host" for s in steps):
        return Outcome("to-host", f"not forwarded: no exposed port on {facts.proto}/{facts.port}; "
                                  "the packet is for the host itself")
    accept = next((s for s in reversed(steps) if s.kind == "rule" and s.verdict == "accept" and _decides(s)), None)
    why = f" ({accept.chain}: {accept.text})" if accept else ""
    return Outcome("to-host", f"accepted: delivered to the host itself{why}")


def _interface(steps: list[Step], chain: str, pattern: re.Pattern[str]) -> str | None:
    for s in steps:
        if s.kind == "packet" and s.chain == chain and (m := pattern.search(s.text)):
            return m.group(1)
    return None

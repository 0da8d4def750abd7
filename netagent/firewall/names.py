"""Names of the sets and maps in rules/netagent.nft that the agent fills.

One place for them: tests/unit/test_firewall.py checks every name against the
declarations in the rules file, so a rename there cannot silently break code.
"""
from __future__ import annotations

# Host facts, filled from the config at every (re)load.
UPLINKS = "uplinks"
ALWAYS_DENY = "always_deny"
ALWAYS_ALLOW = "always_allow"
EDGE_ADDRESSES = "edge_addresses"     # hairpin: edge ip . port pairs sandboxes may reach
# Per slot, for as long as its kernel objects exist.
SBX_IFACES = "sbx_ifaces"
SBX_SRC = "sbx_src"
SLOT_MARK_IN = "slot_mark_in"
# Per allocation, churn (#15): its egress mark (by generation) and live marks.
SLOT_MARK = "slot_mark"
LIVE_MARKS = "live_marks"
# Per allocation: egress policy and exposed ports. The egress mode is which of
# two plain sets holds the sandbox IP (not a verdict map: see rules/netagent.nft).
EGRESS_OPEN = "egress_open"
EGRESS_BLOCKED = "egress_blocked"
ALLOW_NET = "allow_net"
ALLOW_PORT = "allow_port"
DENY_NET = "deny_net"
DENY_PORT = "deny_port"
DNS_LOCKED = "dns_locked"
PORT_DNAT = "port_dnat"
# First-payload check (issue #14): sandboxes with a domain allowlist.
SNI_CHECK = "sni_check"
# The first-payload check's own table (`ip <prefix>_fp`, rules/firstpayload.nft)
# and the chain that holds its one queue rule.
FIRST_PAYLOAD_TABLE_SUFFIX = "_fp"
FIRST_PAYLOAD_QUEUE_CHAIN = "first_payload_queue"
EGRESS_SNAT = "egress_snat"   # sandbox IP -> its sticky egress address (issue #14)
# Not state: elements come from DNS answers and expire on their own.
FQDN_IPS = "fqdn_ips"
# Request interception (issue #23): sandbox IP . address . port, from DNS answers too.
INTERCEPT_DST = "intercept_dst"

# Usage accounting (issue #14): per allocation, each element carries a counter.
# Never in STATE_SETS: a full sync must not flush them (that would zero the
# counts); keys are (path, direction) as GetUsage reports them.
USAGE_SETS = {
    ("egress", "sent"): "usage_egress_sent",
    ("egress", "received"): "usage_egress_received",
    ("ingress", "sent"): "usage_ingress_sent",
    ("ingress", "received"): "usage_ingress_received",
    ("host", "sent"): "usage_host_sent",
    ("host", "received"): "usage_host_received",
}

MAPS = (PORT_DNAT, SLOT_MARK, SLOT_MARK_IN, EGRESS_SNAT)
# Sets and maps whose whole content is derived from config + state (a full
# sync flushes and refills exactly these).
STATE_SETS = (UPLINKS, ALWAYS_DENY, ALWAYS_ALLOW, EDGE_ADDRESSES, SBX_IFACES, SBX_SRC,
              EGRESS_OPEN, EGRESS_BLOCKED, ALLOW_NET, ALLOW_PORT, DENY_NET, DENY_PORT, DNS_LOCKED,
              SNI_CHECK, LIVE_MARKS)
STATE_MAPS = MAPS
ALL = STATE_SETS + STATE_MAPS + (FQDN_IPS, INTERCEPT_DST) + tuple(USAGE_SETS.values())

"""Names of the sets and maps in rules/netagent.nft that the agent fills.

One place for them: tests/unit/test_firewall.py checks every name against the
declarations in the rules file, so a rename there cannot silently break code.
"""
from __future__ import annotations

# Host facts, filled from the config at every (re)load.
UPLINKS = "uplinks"
ALWAYS_DENY = "always_deny"
ALWAYS_ALLOW = "always_allow"
# Per slot, for as long as its kernel objects exist.
SBX_IFACES = "sbx_ifaces"
SBX_SRC = "sbx_src"
SLOT_MARK_IN = "slot_mark_in"
# Per allocation, churn (#15): its egress mark (by generation) and live marks.
SLOT_MARK = "slot_mark"
LIVE_MARKS = "live_marks"
# Per allocation: egress policy and exposed ports.
EGRESS_MODE = "egress_mode"
ALLOW_NET = "allow_net"
ALLOW_PORT = "allow_port"
DENY_NET = "deny_net"
DENY_PORT = "deny_port"
DNS_LOCKED = "dns_locked"
PORT_DNAT = "port_dnat"
# Not state: elements come from DNS answers and expire on their own.
FQDN_IPS = "fqdn_ips"

MAPS = (EGRESS_MODE, PORT_DNAT, SLOT_MARK, SLOT_MARK_IN)
# Sets and maps whose whole content is derived from config + state (a full
# sync flushes and refills exactly these).
STATE_SETS = (UPLINKS, ALWAYS_DENY, ALWAYS_ALLOW, SBX_IFACES, SBX_SRC,
              ALLOW_NET, ALLOW_PORT, DENY_NET, DENY_PORT, DNS_LOCKED, LIVE_MARKS)
STATE_MAPS = MAPS
ALL = STATE_SETS + STATE_MAPS + (FQDN_IPS,)

# The verdicts egress_mode maps a sandbox to.
MODE_OPEN = "jump mode_open"
MODE_BLOCKED = "jump mode_blocked"

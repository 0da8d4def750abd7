"""Flow records, pure: which sandbox a host-netns conntrack entry belongs to,
and the record it becomes when it ends (or was found gone after a restart).

In the host netns a sandbox's flow is seen after the slot's masquerade: its
egress flows have the sandbox IP as original source; a flow to one of its
exposed ports is DNATed to the sandbox IP, which is then the reply's source.
Flows from the host itself to a slot (reachability probes, from the host veth
address) are not the sandbox's and are left out."""
from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from . import codec

EGRESS, INGRESS = "egress", "ingress"
# slot index -> ((allocated at, sandbox id), ...) oldest first: who held the slot since when
Owners = Mapping[int, Sequence[tuple[float, str]]]


@dataclass(frozen=True)
class FlowRecord:
    sandbox_id: str
    direction: str            # egress: the sandbox started it; ingress: to one of its exposed ports
    protocol: str             # tcp, udp, icmp, or the IP protocol number
    source: str               # egress: the sandbox IP; ingress: the client
    source_port: int
    destination: str          # egress: the peer; ingress: the sandbox IP
    destination_port: int     # ingress: the guest port
    domain: str               # the names whose DNS answers admitted the destination ("" if none)
    bytes_sent: int           # by the sandbox (IP bytes)
    bytes_received: int
    packets_sent: int
    packets_received: int
    start: float              # unix seconds
    end: float                # unix seconds (while_down: when the agent found it gone)
    end_reason: str           # codec.END_REASONS
    while_down: bool          # ended while the agent was down: counters as last seen
    key: str                  # unique per flow (a live flow's: its CtEntry.entry_id)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Placement:
    slot: int
    sandbox_ip: str
    direction: str


def place(entry: codec.CtEntry, index_of: Callable[[str], int],
          transit: ipaddress.IPv4Network) -> Placement | None:
    """The slot and direction of an entry, or None when it is not a sandbox's
    flow. `index_of` maps a sandbox IP to its slot (ValueError otherwise)."""
    try:
        return Placement(index_of(entry.orig.src), entry.orig.src, EGRESS)
    except ValueError:
        pass
    if ipaddress.IPv4Address(entry.orig.src) in transit:
        return None   # the host's own probes, from a host veth address
    try:
        return Placement(index_of(entry.reply.src), entry.reply.src, INGRESS)
    except ValueError:
        return None


def owner_at(owners: Owners, slot: int, started: float) -> str | None:
    """The sandbox that held the slot when the flow started: the last one
    allocated at or before `started` (a slot is reused only after its flows
    are flushed, but their destroy events may be read after the reuse)."""
    held = owners.get(slot, ())
    for since, sandbox_id in reversed(held):
        if since <= started:   # created_at is set before the allocation's elements exist: no flow precedes it
            return sandbox_id
    return None


def make_record(entry: codec.CtEntry, where: Placement, sandbox_id: str, domain: str,
                now: float | None = None, destroyed: bool = True) -> FlowRecord:
    """The record of an entry that ended (`destroyed`), or of a live one as
    seen now (destroyed=False: kept in the live set, keyed by its entry id; a
    new event has no timestamps, so its start is `now`)."""
    wall = time.time() if now is None else now
    start = entry.start_ns / 1e9 if entry.start_ns else wall
    end = entry.stop_ns / 1e9 if destroyed and entry.stop_ns else wall
    proto = codec.PROTOCOLS.get(entry.orig.proto, str(entry.orig.proto))
    if where.direction == EGRESS:
        o = entry.orig
        src, sport, dst, dport = o.src, o.sport, o.dst, o.dport
        sent, received = (entry.packets_orig, entry.bytes_orig), (entry.packets_reply, entry.bytes_reply)
    else:
        src, sport = entry.orig.src, entry.orig.sport
        dst, dport = entry.reply.src, entry.reply.sport    # after DNAT: the sandbox IP and guest port
        sent, received = (entry.packets_reply, entry.bytes_reply), (entry.packets_orig, entry.bytes_orig)
    return FlowRecord(sandbox_id, where.direction, proto, src, sport, dst, dport, domain,
                      sent[1], received[1], sent[0], received[0], start, max(end, start),
                      codec.end_reason(entry, destroyed), not destroyed, entry.key if destroyed else entry.entry_id)


def refused_record(sandbox_id: str, protocol: str, source: str, source_port: int, destination: str,
                   port: int, length: int, domain: str, now: float) -> FlowRecord:
    """A flow the sandbox's policy refused: its first packet was dropped, so
    conntrack never kept it; the denied-flow log (nflog) reported it."""
    key = f"refused-{source}-{source_port}-{destination}-{port}-{protocol}-{int(now)}"
    return FlowRecord(sandbox_id, EGRESS, protocol, source, source_port, destination, port, domain,
                      length, 0, 1, 0, now, now, codec.REFUSED, False, key)


def ended_while_down(saved: Sequence[FlowRecord], alive: set[str], now: float) -> list[FlowRecord]:
    """Flows in the saved live set (keyed by entry id) that are no longer in
    conntrack: they ended while no agent read its events. Their counters are
    as last seen; their record key adds the start to the entry id."""
    return [FlowRecord(**{**r.as_dict(), "end": max(now, r.start), "while_down": True,
                          "key": f"{r.key}@{r.start:.6f}"})
            for r in saved if r.key not in alive]

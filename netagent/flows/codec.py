"""ctnetlink messages, pure: a conntrack entry as the kernel reports it (a
destroy event or a dump reply) into a `CtEntry`; the dump request; how a flow
ended. The reader (flows/reader.py) does the I/O.

Attribute numbers: linux/netfilter/nfnetlink_conntrack.h."""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from ..firewall.nfnetlink import NLM_F_DUMP, NLM_F_REQUEST, attrs

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY = 1, 3
MSG_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW          # new events and dump replies
MSG_DESTROY = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE   # destroy events

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID, CTA_TIMESTAMP = 8, 9, 10, 12, 20
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2

IPS_SEEN_REPLY = 1 << 1
IPS_DST_NAT = 1 << 5
# enum tcp_conntrack (linux/netfilter/nf_conntrack_tcp.h)
TCP_SYN_SENT, TCP_ESTABLISHED, TCP_TIME_WAIT, TCP_CLOSE = 1, 3, 7, 8
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}

# How a flow ended (FlowRecord.end). The kernel says how a TCP connection
# finished; for the others it only says whether the peer ever answered.
CLOSED = "closed"          # TCP: both FINs seen (TIME_WAIT)
RESET = "reset"            # TCP: an RST ended it (CLOSE), from either side
UNREPLIED = "unreplied"    # nothing ever came back (a silent or unreachable peer)
IDLE = "idle"              # UDP, ICMP...: answered, then timed out or flushed
FLUSHED = "flushed"        # TCP still open when its entry was deleted (release, policy change, timeout)
REFUSED = "refused"        # dropped by the sandbox's policy (from the denied-flow log, not conntrack)
UNKNOWN = "unknown"        # ended while the agent was down, last seen open
END_REASONS = (CLOSED, RESET, UNREPLIED, IDLE, FLUSHED, REFUSED, UNKNOWN)


@dataclass(frozen=True)
class Tuple:
    src: str
    dst: str
    proto: int
    sport: int
    dport: int


@dataclass(frozen=True)
class CtEntry:
    orig: Tuple
    reply: Tuple
    status: int
    mark: int
    ct_id: int
    tcp_state: int | None
    packets_orig: int
    bytes_orig: int
    packets_reply: int
    bytes_reply: int
    start_ns: int       # CLOCK_REALTIME; 0 when nf_conntrack_timestamp was off at its creation
    stop_ns: int        # set on destroy events only

    @property
    def key(self) -> str:
        """Names this flow's record: the kernel's id with its start (an id comes
        back when the same tuple reuses a freed entry)."""
        return f"{self.ct_id:08x}-{self.start_ns:x}-{self.orig.src}-{self.orig.sport}"

    @property
    def entry_id(self) -> str:
        """Names the live entry in every message about it (a new event has no
        timestamps): the kernel's id and the original tuple."""
        o = self.orig
        return f"{self.ct_id:08x}-{o.proto}-{o.src}-{o.sport}-{o.dst}-{o.dport}"


def dump_request(seq: int, family: int = socket.AF_INET) -> bytes:
    """IPCTNL_MSG_CT_GET with NLM_F_DUMP: every entry of the netns for this family."""
    body = struct.pack("=BBH", family, 0, 0)
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_entry(body: bytes) -> CtEntry | None:
    """One message's attributes (past nfgenmsg); None for a non-IPv4 entry or one without tuples."""
    orig = reply = None
    status = mark = ct_id = 0
    tcp_state = None
    counters = {CTA_COUNTERS_ORIG: (0, 0), CTA_COUNTERS_REPLY: (0, 0)}
    start = stop = 0
    for kind, value in attrs(body):
        if kind == CTA_TUPLE_ORIG:
            orig = _tuple(value)
        elif kind == CTA_TUPLE_REPLY:
            reply = _tuple(value)
        elif kind == CTA_STATUS:
            (status,) = struct.unpack("!I", value[:4])
        elif kind == CTA_MARK:
            (mark,) = struct.unpack("!I", value[:4])
        elif kind == CTA_ID:
            (ct_id,) = struct.unpack("!I", value[:4])
        elif kind == CTA_PROTOINFO:
            tcp_state = _tcp_state(value)
        elif kind in counters:
            counters[kind] = _two_u64(value, CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES)
        elif kind == CTA_TIMESTAMP:
            start, stop = _two_u64(value, CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP)
    if orig is None or reply is None:
        return None
    (po, bo), (pr, br) = counters[CTA_COUNTERS_ORIG], counters[CTA_COUNTERS_REPLY]
    return CtEntry(orig, reply, status, mark, ct_id, tcp_state, po, bo, pr, br, start, stop)


def end_reason(entry: CtEntry, destroyed: bool = True) -> str:
    """How the flow ended, from its last state. `destroyed` False: the entry
    was last seen alive (its end was not observed), so an open flow is UNKNOWN."""
    if entry.orig.proto == 6 and entry.tcp_state is not None:
        if entry.tcp_state == TCP_TIME_WAIT:
            return CLOSED
        if entry.tcp_state == TCP_CLOSE:
            return RESET
    if not entry.status & IPS_SEEN_REPLY:
        return UNREPLIED if destroyed else UNKNOWN
    if not destroyed:
        return UNKNOWN
    return FLUSHED if entry.orig.proto == 6 else IDLE


def _tuple(buf: bytes) -> Tuple | None:
    src = dst = None
    proto = sport = dport = 0
    for kind, value in attrs(buf):
        if kind == CTA_TUPLE_IP:
            for k, v in attrs(value):
                if k == CTA_IP_V4_SRC and len(v) == 4:
                    src = socket.inet_ntoa(v)
                elif k == CTA_IP_V4_DST and len(v) == 4:
                    dst = socket.inet_ntoa(v)
        elif kind == CTA_TUPLE_PROTO:
            for k, v in attrs(value):
                if k == CTA_PROTO_NUM:
                    proto = v[0]
                elif k == CTA_PROTO_SRC_PORT:
                    (sport,) = struct.unpack("!H", v[:2])
                elif k == CTA_PROTO_DST_PORT:
                    (dport,) = struct.unpack("!H", v[:2])
    if src is None or dst is None:
        return None
    return Tuple(src, dst, proto, sport, dport)


def _tcp_state(buf: bytes) -> int | None:
    for kind, value in attrs(buf):
        if kind == CTA_PROTOINFO_TCP:
            for k, v in attrs(value):
                if k == CTA_PROTOINFO_TCP_STATE:
                    return v[0]
    return None


def _two_u64(buf: bytes, first_kind: int, second_kind: int) -> tuple[int, int]:
    """Two big-endian u64 attributes of a nest (0 when absent): counters, timestamps."""
    values = {first_kind: 0, second_kind: 0}
    for kind, value in attrs(buf):
        if kind in values and len(value) >= 8:
            (values[kind],) = struct.unpack("!Q", value[:8])
    return values[first_kind], values[second_kind]

"""Denied-flow log: read the host table's nflog group (rules/netagent.nft,
the deny_* chains) over nfnetlink. Parsing is pure; the socket must be made on
a host-netns thread (sockets keep their netns)."""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from .nfnetlink import NETLINK_NETFILTER, NLM_F_ACK, NLM_F_REQUEST, attr, attrs, check_ack, messages

GROUP = 4242                      # `log group` in rules/netagent.nft
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
COPY_BYTES = 64                   # IP header + ports is all we read
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}


@dataclass(frozen=True)
class DeniedPacket:
    reason: str                   # the deny_* chain: always_deny, policy_deny, ...
    source: str
    destination: str
    protocol: str
    port: int                     # destination port (0 for ICMP and others)
    source_port: int = 0          # (0 for ICMP and others)
    length: int = 0               # the packet's IP total length


def config_message(group: int, seq: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + b"".join(attrs)
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def bind_messages(group: int) -> list[bytes]:
    return [config_message(group, 1, attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND))),
            config_message(group, 2, attr(NFULA_CFG_MODE, struct.pack("!IBB", COPY_BYTES, NFULNL_COPY_PACKET, 0)))]


def parse_messages(data: bytes) -> list[DeniedPacket]:
    """Every NFULNL_MSG_PACKET in one recv() buffer."""
    packets = (_parse_packet(buf) for buf in messages(data, (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET))
    return [p for p in packets if p]


def _parse_packet(buf: bytes) -> DeniedPacket | None:
    prefix, payload = "", b""
    for kind, value in attrs(buf):
        if kind == NFULA_PREFIX:
            prefix = value.rstrip(b"\0").decode(errors="replace").strip()
        elif kind == NFULA_PAYLOAD:
            payload = value
    if not prefix or len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    sport, port = struct.unpack_from("!HH", payload, ihl) if proto in (6, 17) and len(payload) >= ihl + 4 else (0, 0)
    return DeniedPacket(prefix, socket.inet_ntoa(payload[12:16]), socket.inet_ntoa(payload[16:20]),
                        PROTOCOLS.get(proto, str(proto)), port, sport, struct.unpack_from("!H", payload, 2)[0])


def open_socket(group: int = GROUP) -> socket.socket:
    """Bind to the nflog group. Call on a thread in the host netns."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    for msg in bind_messages(group):
        sock.send(msg)
        check_ack(sock, f"nflog group {group}")
    sock.setblocking(False)
    return sock

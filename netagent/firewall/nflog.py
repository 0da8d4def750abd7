"""Denied-flow log: read the host table's nflog group (rules/netagent.nft,
the deny_* chains) over nfnetlink. Parsing is pure; the socket must be made on
a host-netns thread (sockets keep their netns)."""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

GROUP = 4242                      # `log group` in rules/netagent.nft
NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
COPY_BYTES = 64                   # IP header + ports is all we read
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp"}


@dataclass(frozen=True)
class DeniedPacket:
    reason: str                   # the deny_* chain: always_deny, policy_deny, ...
    source: str
    destination: str
    protocol: str
    port: int                     # destination port (0 for ICMP and others)


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def config_message(group: int, seq: int, *attrs: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + b"".join(attrs)
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def bind_messages(group: int) -> list[bytes]:
    return [config_message(group, 1, _attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND))),
            config_message(group, 2, _attr(NFULA_CFG_MODE, struct.pack("!IBB", COPY_BYTES, NFULNL_COPY_PACKET, 0)))]


def parse_messages(data: bytes) -> list[DeniedPacket]:
    """Every NFULNL_MSG_PACKET in one recv() buffer."""
    out = []
    pos = 0
    while pos + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, pos)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            packet = _parse_packet(data[pos + 16 + 4:pos + length])   # past nlmsghdr and nfgenmsg
            if packet:
                out.append(packet)
        pos += (length + 3) & ~3
    return out


def _parse_packet(attrs: bytes) -> DeniedPacket | None:
    prefix, payload = "", b""
    pos = 0
    while pos + 4 <= len(attrs):
        size, kind = struct.unpack_from("=HH", attrs, pos)
        if size < 4:
            break
        value = attrs[pos + 4:pos + size]
        if kind & 0x7FFF == NFULA_PREFIX:
            prefix = value.rstrip(b"\0").decode(errors="replace").strip()
        elif kind & 0x7FFF == NFULA_PAYLOAD:
            payload = value
        pos += (size + 3) & ~3
    if not prefix or len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 0x0F) * 4
    proto = payload[9]
    port = struct.unpack_from("!H", payload, ihl + 2)[0] if proto in (6, 17) and len(payload) >= ihl + 4 else 0
    return DeniedPacket(prefix, socket.inet_ntoa(payload[12:16]), socket.inet_ntoa(payload[16:20]),
                        PROTOCOLS.get(proto, str(proto)), port)


def open_socket(group: int = GROUP) -> socket.socket:
    """Bind to the nflog group. Call on a thread in the host netns."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    for msg in bind_messages(group):
        sock.send(msg)
        reply = sock.recv(4096)
        if struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
            code = -struct.unpack_from("=i", reply, 16)[0]
            if code:
                sock.close()
                raise OSError(code, f"nflog group {group}: {os.strerror(code)}")
    sock.setblocking(False)
    return sock

"""NFQUEUE over raw nfnetlink: bind a queue, read packets, send verdicts.
Message building and parsing are pure; `open_socket` must run on a thread in
the host netns (sockets keep their netns)."""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from .nfnetlink import NETLINK_NETFILTER, NLM_F_ACK, NLM_F_REQUEST, attr, attrs, check_ack, messages

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_MARK, NFQA_PAYLOAD = 1, 2, 3, 10
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_PACKET = 2
NF_DROP, NF_ACCEPT = 0, 1
COPY_RANGE = 0xFFFF
QUEUE_MAXLEN = 4096               # packets the kernel holds for us before dropping new ones


@dataclass(frozen=True)
class QueuedPacket:
    packet_id: int
    source: str
    source_port: int
    destination: str
    destination_port: int
    seq: int
    flags: int                    # TCP flags byte
    payload: bytes                # TCP payload


def _message(kind: int, flags: int, seq: int, queue: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


def bind_messages(queue: int) -> list[bytes]:
    flags = NLM_F_REQUEST | NLM_F_ACK
    return [_message(NFQNL_MSG_CONFIG, flags, 1, queue,
                     attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))),
            _message(NFQNL_MSG_CONFIG, flags, 2, queue,
                     attr(NFQA_CFG_PARAMS, struct.pack("!IB", COPY_RANGE, NFQNL_COPY_PACKET))
                     + attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)))]


def verdict_message(queue: int, packet_id: int, verdict: int, mark: int | None = None) -> bytes:
    attrs = attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    if mark is not None:
        attrs += attr(NFQA_MARK, struct.pack("!I", mark))
    return _message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, queue, attrs)


def parse_messages(data: bytes) -> list[QueuedPacket]:
    """Every queued packet in one recv() buffer."""
    out = []
    for buf in messages(data, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET):
        packet_id, ip = None, b""
        for kind, value in attrs(buf):
            if kind == NFQA_PACKET_HDR:
                packet_id = struct.unpack_from("!I", value)[0]
            elif kind == NFQA_PAYLOAD:
                ip = value
        if packet_id is not None:
            out.append(tcp_packet(packet_id, ip))
    return out


def tcp_packet(packet_id: int, ip: bytes) -> QueuedPacket:
    """The fields we judge by. A packet that is not whole IPv4/TCP comes back with
    no ports (the checker drops it: the rules queue nothing else)."""
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
        return QueuedPacket(packet_id, "", 0, "", 0, 0, 0, b"")
    ihl = (ip[0] & 0x0F) * 4
    total = min(struct.unpack_from("!H", ip, 2)[0], len(ip))
    if total < ihl + 20:
        return QueuedPacket(packet_id, "", 0, "", 0, 0, 0, b"")
    sport, dport, seq = struct.unpack_from("!HHI", ip, ihl)
    doff = (ip[ihl + 12] >> 4) * 4
    return QueuedPacket(packet_id, socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport,
                        seq, ip[ihl + 13], ip[ihl + doff:total])


def open_socket(queue: int) -> socket.socket:
    """Bind the queue. Call on a thread in the host netns."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    for msg in bind_messages(queue):
        sock.send(msg)
        check_ack(sock, f"nfqueue {queue}")
    sock.setblocking(False)
    return sock

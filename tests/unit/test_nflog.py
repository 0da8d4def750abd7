"""nflog message building and parsing (pure)."""
from __future__ import annotations

import socket
import struct

from scapy.all import IP, TCP, UDP

from netagent.firewall.nflog import (
    NFNL_SUBSYS_ULOG,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    bind_messages,
    parse_messages,
)
from netagent.firewall.nfnetlink import attr


def packet_message(prefix: str, payload: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(4242))
    body += attr(NFULA_PREFIX, prefix.encode() + b"\0") + attr(NFULA_PAYLOAD, payload)
    return struct.pack("=IHHII", 16 + len(body), NFNL_SUBSYS_ULOG << 8, 0, 0, 0) + body


def test_parse_reads_reason_addresses_protocol_and_port():
    tcp = bytes(IP(src="10.12.0.1", dst="169.254.169.254") / TCP(dport=80))[:64]
    udp = bytes(IP(src="10.12.0.3", dst="203.0.113.11") / UDP(dport=53))
    icmp = bytes(IP(src="10.12.0.3", dst="10.99.0.10", proto=1) / b"\x08\x00\x00\x00")
    got = parse_messages(packet_message("always_deny", tcp) + packet_message("policy_deny", udp)
                         + packet_message("to_host", icmp))
    assert [(p.reason, p.source, p.destination, p.protocol, p.port) for p in got] == [
        ("always_deny", "10.12.0.1", "169.254.169.254", "tcp", 80),
        ("policy_deny", "10.12.0.3", "203.0.113.11", "udp", 53),
        ("to_host", "10.12.0.3", "10.99.0.10", "icmp", 0)]


def test_garbage_and_other_messages_are_ignored():
    assert parse_messages(b"") == [] and parse_messages(b"\x01" * 10) == []
    assert parse_messages(packet_message("", bytes(IP(dst="1.2.3.4")))) == []   # no reason
    assert parse_messages(packet_message("x", b"\x60" + bytes(39))) == []      # IPv6


def test_bind_messages_are_aligned_netlink_requests():
    for msg in bind_messages(4242):
        length, kind, flags = struct.unpack_from("=IHH", msg)
        assert length == len(msg) and length % 4 == 0 and kind == (NFNL_SUBSYS_ULOG << 8) | 1 and flags & 1

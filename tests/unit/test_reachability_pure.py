"""The pure parts of reachability: the schedule and the SYN packet (no root)."""
from __future__ import annotations

import random
import socket
import struct

from scapy.all import IP, TCP

from netagent.reachability.schedule import PortProbe, ProbeSchedule
from netagent.reachability.tcp_syn import ACK, RST, SYN, ProbeResult, parse_reply, syn_segment

OPEN, CLOSED, SILENT = ProbeResult(True, "syn-ack", 0.001), ProbeResult(False, "rst", 0.001), \
    ProbeResult(False, "timeout", 0.5)


def port() -> PortProbe:
    return PortProbe("sbx-1", 3000, "10.12.0.0", "10.12.0.1")


def test_first_answer_makes_a_port_reachable_and_starts_a_fast_period():
    s, p = ProbeSchedule(), port()
    assert s.apply(p, OPEN, wall=100.0, now=5.0)
    assert (p.reachable, p.changed_at, p.checked_at, p.fast_until) == (True, 100.0, 100.0, 5.0 + s.fast_period_s)
    assert not s.apply(p, OPEN, wall=101.0, now=6.0)
    assert (p.changed_at, p.checked_at) == (100.0, 101.0)


def test_unknown_becomes_unreachable_at_the_first_failure():
    s, p = ProbeSchedule(), port()
    assert s.apply(p, CLOSED, wall=1.0, now=1.0) and p.reachable is False
    assert not s.apply(p, SILENT, wall=2.0, now=2.0)


def test_a_reachable_port_goes_down_only_after_down_after_failures_in_a_row():
    s, p = ProbeSchedule(down_after=2), port()
    s.apply(p, OPEN, wall=1.0, now=1.0)
    assert not s.apply(p, CLOSED, wall=2.0, now=2.0) and p.reachable is True   # one lost packet: no flap
    assert s.next_delay(p, now=100.0) <= s.fast_interval_s * (1 + s.jitter)     # ...but re-checked fast
    assert not s.apply(p, OPEN, wall=3.0, now=3.0) and p.failures == 0
    s.apply(p, CLOSED, wall=4.0, now=4.0)
    assert s.apply(p, SILENT, wall=5.0, now=5.0) and p.reachable is False and p.changed_at == 5.0


def test_delays_are_fast_then_stable_with_bounded_jitter():
    s, p = ProbeSchedule(interval_s=0.7, fast_interval_s=0.1, fast_period_s=5.0, jitter=0.2), port()
    s.apply(p, OPEN, wall=0.0, now=0.0)
    rng = random.Random(1)
    fast = [s.next_delay(p, now=1.0, rng=rng) for _ in range(500)]
    stable = [s.next_delay(p, now=6.0, rng=rng) for _ in range(500)]
    assert 0.08 <= min(fast) and max(fast) <= 0.12
    assert 0.56 <= min(stable) and max(stable) <= 0.84
    assert max(stable) - min(stable) > 0.2   # jitter is really there


def test_syn_segment_is_a_valid_syn_with_a_correct_checksum():
    src, dst = socket.inet_aton("10.12.0.0"), socket.inet_aton("10.12.0.1")
    seg = syn_segment(src, dst, 40001, 3000, 0x12345678)
    pkt = IP(bytes(IP(src="10.12.0.0", dst="10.12.0.1", proto=6) / seg))
    tcp = pkt[TCP]
    wire_checksum = tcp.chksum
    del tcp.chksum
    assert TCP(bytes(tcp)).chksum == wire_checksum == struct.unpack("!H", seg[16:18])[0]
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.flags) == (40001, 3000, 0x12345678, "S")
    assert dict(tcp.options)["MSS"] == 1460


def test_parse_reply_reads_address_ports_ack_and_flags():
    raw = bytes(IP(src="10.12.0.1", dst="10.12.0.0") / TCP(sport=3000, dport=40001, ack=0x12345679, flags="SA"))
    src, sport, dport, ack, flags = parse_reply(raw)
    assert (socket.inet_ntoa(src), sport, dport, ack) == ("10.12.0.1", 3000, 40001, 0x12345679)
    assert flags & SYN and flags & ACK and not flags & RST
    assert parse_reply(b"\x60" + bytes(40)) is None   # IPv6
    assert parse_reply(raw[:25]) is None               # truncated

"""The first-payload check's pure parts: what a payload names (TLS SNI, HTTP
Host), the verdict, the per-flow gathering, and the netlink wire."""
from __future__ import annotations

import socket
import ssl
import struct

from netagent.firewall import nfqueue, xt_queue
from netagent.firstpayload.gather import Gatherer, Step
from netagent.firstpayload.parse import MAX_FIRST_PAYLOAD, Garbage, Named, Nameless, NeedMore, parse
from netagent.firstpayload.verdict import decide


def client_hello(sni: str | None = "allowed.test", pad: int = 0, extra_ext: bytes = b"",
                 record_size: int = 16384) -> bytes:
    """A TLS 1.2/1.3 ClientHello, in records of at most `record_size` bytes."""
    exts = b""
    if sni is not None:
        name = sni.encode()
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        body = struct.pack("!H", len(entry)) + entry
        exts += struct.pack("!HH", 0, len(body)) + body
    if pad:
        exts += struct.pack("!HH", 21, pad) + b"\0" * pad          # the padding extension
    exts += extra_ext
    hello = (b"\x03\x03" + b"\x11" * 32 + b"\x20" + b"\x22" * 32 + struct.pack("!H", 4) + b"\x13\x01\x13\x02"
             + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + len(hello).to_bytes(3, "big") + hello
    out = b""
    for i in range(0, len(hs), record_size):
        chunk = hs[i:i + record_size]
        out += b"\x16\x03\x01" + struct.pack("!H", len(chunk)) + chunk
    return out


def real_client_hello(server_name: str) -> bytes:
    """The ClientHello Python's own TLS stack sends (no socket: memory BIOs)."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


# ---- TLS ------------------------------------------------------------------------

def test_sni_of_a_real_client_hello():
    assert parse(real_client_hello("Allowed.Test")) == Named("tls", "allowed.test")


def test_client_hello_split_anywhere_needs_more_until_whole():
    data = client_hello("other.test")
    for cut in range(1, len(data)):
        assert parse(data[:cut]) == NeedMore("tls"), cut
    assert parse(data) == Named("tls", "other.test")


def test_client_hello_of_16_kib_over_two_records():
    data = client_hello("allowed.test", pad=16 * 1024)
    assert len(data) > 16 * 1024 + 100
    assert data.count(b"\x16\x03\x01") >= 2   # the handshake spans records
    assert parse(data) == Named("tls", "allowed.test")
    assert parse(data[:-1]) == NeedMore("tls")


def test_client_hello_in_tiny_records():
    assert parse(client_hello("allowed.test", record_size=7)) == Named("tls", "allowed.test")


def test_no_sni_is_nameless():
    assert parse(client_hello(None)) == Nameless("tls")


def test_garbage_on_443():
    for junk in (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00",          # a ServerHello
                 b"\x16\x09\x09\x00\x05hello",                          # not a TLS version
                 b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",  # body cut short
                 b"\x16\x03\x01\x00\x00",                               # empty record
                 client_hello("bad name!"),
                 client_hello("a.test", extra_ext=struct.pack("!HH", 0xFE0D, 0)),   # ECH
                 client_hello("a.test", extra_ext=struct.pack("!HH", 0, 0))):       # SNI twice
        assert isinstance(parse(junk), Garbage), junk
    assert isinstance(parse(b"\x17\x03\x03\x00\x10" + b"x" * 16), Garbage)  # application data first


def test_oversized_client_hello_is_refused_not_awaited():
    hs_len = MAX_FIRST_PAYLOAD + 1
    data = b"\x16\x03\x01\x40\x00\x01" + hs_len.to_bytes(3, "big")
    assert isinstance(parse(data), Garbage)


# ---- HTTP -----------------------------------------------------------------------

def test_http_host_header():
    assert parse(b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: Other.Test:8080\r\n\r\n") == Named("http", "other.test")
    assert parse(b"GET / HTTP/1.1\nHost: a.test\n\n") == Named("http", "a.test")   # bare LF heads end too


def test_http_head_split_needs_more():
    data = b"GET /x HTTP/1.1\r\nHost: allowed.test\r\nAccept: */*\r\n\r\n"
    for cut in range(1, len(data)):
        assert parse(data[:cut]) == NeedMore("http"), cut


def test_host_with_nul_is_garbage():
    assert isinstance(parse(b"GET / HTTP/1.1\r\nHost: allowed.test\0.other.test\r\n\r\n"), Garbage)
    assert isinstance(parse(b"GET / HTTP/1.1\r\nHost: allowed.test\0"), Garbage)  # even before the head ends


def test_http_ambiguities_are_garbage():
    for head in (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
                 b"GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: a.test\rX: y\r\n\r\n",
                 b"GET / HTTP/1.1\r\n Host: a.test\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
                 b"\x01\x02\x03 binary"):
        assert isinstance(parse(head), Garbage), head


def test_absolute_and_connect_targets_name_their_host():
    assert parse(b"GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n") == Named("http", "a.test")
    assert parse(b"CONNECT b.test:443 HTTP/1.1\r\n\r\n") == Named("http", "b.test")


def test_nameless_http():
    assert parse(b"GET / HTTP/1.0\r\n\r\n") == Nameless("http")
    assert parse(b"GET / HTTP/1.1\r\nHost: 192.0.2.53\r\n\r\n") == Nameless("http")


def test_http2_prior_knowledge_is_nameless():
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert parse(preface[:10]) == NeedMore("http")
    assert parse(preface + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00") == Nameless("http")


# ---- verdict ----------------------------------------------------------------------

def test_verdicts():
    domains = ("allowed.test", "*.cdn.test")
    assert decide(Named("tls", "allowed.test"), domains, frozenset()).allowed
    assert decide(Named("http", "x.cdn.test"), domains, frozenset()).allowed
    denied = decide(Named("tls", "other.test"), domains, frozenset({"allowed.test"}))
    assert not denied.allowed and denied.reason == "sni"
    assert decide(Named("http", "other.test"), domains, frozenset()).reason == "host"
    assert decide(NeedMore("tls"), domains, frozenset()) is None
    assert not decide(Garbage("tls", "x"), domains, frozenset({"allowed.test"})).allowed


def test_nameless_passes_only_for_an_address_admitted_for_exactly_one_name():
    domains = ("allowed.test", "alias.test")
    assert decide(Nameless("tls"), domains, frozenset({"allowed.test"})).allowed
    assert not decide(Nameless("tls"), domains, frozenset({"allowed.test", "alias.test"})).allowed
    assert not decide(Nameless("http"), domains, frozenset()).allowed


# ---- gathering ----------------------------------------------------------------------

KEY = ("10.12.0.1", 40000, "192.0.2.53", 443)


def test_split_hello_passes_prefixes_and_judges_the_completing_segment():
    g = Gatherer()
    data = client_hello("allowed.test", pad=3000)
    assert g.feed(KEY, 1000, b"", 0.0).step is Step.PASS            # the handshake's ACK
    seq = 1000
    for i in range(0, len(data), 1400):
        out = g.feed(KEY, seq, data[i:i + 1400], 0.0)
        seq += len(data[i:i + 1400])
    assert out.step is Step.JUDGE and out.result == Named("tls", "allowed.test")
    g.forget(KEY)
    assert len(g) == 0


def test_overlap_or_gap_is_dropped_while_undecided():
    g = Gatherer()
    data = client_hello("allowed.test", pad=3000)
    assert g.feed(KEY, 0xFFFFFF00, data[:1000], 0.0).step is Step.PASS        # sequence numbers wrap
    assert g.feed(KEY, 0xFFFFFF00, data[:1000], 0.0).step is Step.DROP        # a resend with any bytes
    assert g.feed(KEY, 0xFFFFFF00 + 2000, data[2000:3000], 0.0).step is Step.DROP   # a gap
    assert g.feed(KEY, (0xFFFFFF00 + 1000) & 0xFFFFFFFF, data[1000:], 0.0).step is Step.JUDGE


def test_a_judged_flow_is_forgotten_so_a_new_flow_on_the_same_ports_is_judged_afresh():
    g = Gatherer()
    assert g.feed(KEY, 0, client_hello("allowed.test"), 0.0).step is Step.JUDGE
    g.forget(KEY)
    out = g.feed(KEY, 77, client_hello("other.test"), 0.5)
    assert out.step is Step.JUDGE and out.result == Named("tls", "other.test")


def test_undecided_flows_are_bounded_and_expire():
    g = Gatherer(max_flows=1)
    g.feed(KEY, 0, b"GET / HTTP/1.1\r\n", 0.0)
    assert g.feed(("10.12.0.1", 40001, "192.0.2.53", 80), 0, b"GET", 0.0).step is Step.FULL
    assert g.feed(("10.12.0.1", 40003, "192.0.2.53", 80), 0, b"GET", 100.0).step is Step.PASS


# ---- wire -------------------------------------------------------------------------

def _ip_tcp(payload: bytes, seq: int = 7) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, seq, 0, 5 << 4, 0x18, 65535, 0, 0)
    total = 20 + len(tcp) + len(payload)
    return (struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 6, 0, socket.inet_aton("10.12.0.1"),
                        socket.inet_aton("192.0.2.53")) + tcp + payload)


def test_queued_packet_parse_and_verdict_message():
    ip = _ip_tcp(b"hello", seq=99)
    attrs = nfqueue.attr(nfqueue.NFQA_PACKET_HDR, struct.pack("!IHB", 42, 0x0800, 2)) + nfqueue.attr(
        nfqueue.NFQA_PAYLOAD, ip)
    msg = nfqueue._message(nfqueue.NFQNL_MSG_PACKET, 0, 0, 4243, attrs)
    [p] = nfqueue.parse_messages(msg + msg[:10])
    assert (p.packet_id, p.source, p.destination, p.destination_port, p.seq, p.payload) == (
        42, "10.12.0.1", "192.0.2.53", 443, 99, b"hello")
    v = nfqueue.verdict_message(4243, 42, nfqueue.NF_ACCEPT, 0x20000)
    assert struct.unpack_from("!II", v, 24) == (nfqueue.NF_ACCEPT, 42)
    assert struct.unpack_from("!I", v, 36) == (0x20000,)
    assert nfqueue.tcp_packet(1, b"\x60" + b"\0" * 40).source == ""          # IPv6: no fields, dropped


def test_xt_queue_batch_names_the_target():
    batch = xt_queue.queue_rule_batch("na_fp", "first_payload_queue", 4243)
    assert b"NFQUEUE\0" in batch and b"na_fp\0" in batch and struct.pack("=HHH", 4243, 1, 0) in batch


# ---- verdict counts -----------------------------------------------------------------

def test_verdict_counts_per_destination_become_one_event_per_sandbox():
    from netagent.core import ops
    from netagent.core.planner import plan_verdicts
    from netagent.firewall import nfqueue as nq
    from netagent.firstpayload.checker import CheckLinks, FirstPayloadCheck

    check = FirstPayloadCheck(1, CheckLinks(None, lambda ip: None, lambda ip, dst: frozenset(),  # type: ignore[arg-type]
                                            lambda ip: "sbx-1"))
    for port, payload in ((443, client_hello("other.test")), (80, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")):
        check.judge(nq.QueuedPacket(1, "10.12.0.1", 40000 + port, "192.0.2.53", port, 0, 0x18, payload))
    # the same ClientHello resent before the flow was labelled: judged again, counted once
    check.judge(nq.QueuedPacket(2, "10.12.0.1", 40443, "192.0.2.53", 443, 0, 0x18, client_hello("other.test")))
    counts = check.take_interval()
    assert sorted(counts, key=lambda c: c.reason) == [ops.DestinationVerdicts("sbx-1", "192.0.2.53", "host", 0, 1),
                                                      ops.DestinationVerdicts("sbx-1", "192.0.2.53", "sni", 0, 1)]
    assert check.take_interval() == ()

    class Inv:
        allocations = {"sbx-1": object()}
    change = plan_verdicts(Inv(), ops.RecordVerdicts(counts + (ops.DestinationVerdicts("gone", "x", "sni", 1, 0),)))
    [event] = change.events
    assert event.sandbox_id == "sbx-1" and event.data["verdicts"] == [
        {"destination": "192.0.2.53", "reason": "host", "allowed": 0, "denied": 1},
        {"destination": "192.0.2.53", "reason": "sni", "allowed": 0, "denied": 1}]


def test_top_sums_verdict_events_per_destination():
    from netagent.operator.top import add_verdicts, verdict_rows
    totals: dict = {}
    add_verdicts(totals, [{"sandbox": "a", "destination": "192.0.2.53", "reason": "sni", "allowed": 3, "denied": 1},
                          {"sandbox": "b", "destination": "192.0.2.9", "reason": "host", "allowed": 1, "denied": 0}])
    add_verdicts(totals, [{"sandbox": "a", "destination": "192.0.2.53", "reason": "sni", "allowed": 1, "denied": 2},
                          {"sandbox": "gone", "destination": "192.0.2.9", "reason": "sni", "allowed": 0, "denied": 9}])
    assert verdict_rows(totals, {"a", "b"}) == [
        {"sandbox": "a", "destination": "192.0.2.53", "check": "sni", "allowed": 4, "refused": 3},
        {"sandbox": "b", "destination": "192.0.2.9", "check": "host", "allowed": 1, "refused": 0}]


def test_the_switches_leave_their_rules_out_of_the_host_table():
    from netagent.config import Config
    from netagent.firewall import ruleset
    source = ruleset.read_rules(ruleset.HOST_RULES)
    on = ruleset.host_table_text(Config(), source)
    assert "jump deny_quic" in on and "ct label set 100" in on
    off = ruleset.host_table_text(Config(first_payload={"check": False, "block_quic": False}), source)
    assert "jump deny_quic" not in off and "ct label set 100" not in off
    assert len(on.splitlines()) - len(off.splitlines()) == 3
    assert ruleset.first_payload_text(Config(prefix="xy"), ruleset.read_rules(ruleset.FIRST_PAYLOAD_RULES)).count(
        "table ip xy_fp {") == 1

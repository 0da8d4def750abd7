"""The flow record's pure parts: ctnetlink destroy messages, how a flow
ended, which sandbox it belongs to, and the store (a real SQLite file)."""
from __future__ import annotations

import ipaddress
import json
import struct
import time

import pytest

from netagent.firewall.nfnetlink import messages
from netagent.flows import codec
from netagent.flows.records import EGRESS, INGRESS, FlowRecord, ended_while_down, make_record, owner_at, place
from netagent.flows.store import FlowStore, Retention

# Destroy events read from a 6.18 kernel (acct and timestamps on) in a scratch
# netns: a TCP connection closed with FINs, a UDP datagram never answered,
# and a TCP connection ended by an RST (SO_LINGER 0), all on 127.0.0.1.
DESTROYS = [bytes.fromhex(h) for h in (
    "fc000000020100000000000000000000020000003400018014000180080001007f000001080002007f0000011c0002800500"
    "01000600000006000200c16a00000600030015b300003400028014000180080001007f000001080002007f0000011c000280"
    "05000100060000000600020015b3000006000300c16a000008000c00c0394199080003000000020e1c0009800c0001000000"
    "0000000000030c00020000000000000000a41c000a800c00010000000000000000010c000200000000000000003c1c001480"
    "0c00010018ef1c2756c2a0080c00020018ef1c279245d46b100004800c00018005000100080000000c001b0018ef1c34934f"
    "b9c4"
    ,
    "fc000000020100000000000000000000020000003400018014000180080001007f000001080002007f0000011c0002800500"
    "01000600000006000200c16800000600030015b300003400028014000180080001007f000001080002007f0000011c000280"
    "05000100060000000600020015b3000006000300c168000008000c009fbb2584080003000000020e1c0009800c0001000000"
    "0000000000050c00020000000000000001111c000a800c00010000000000000000030c00020000000000000000a41c001480"
    "0c00010018ef1c2756c00fc70c00020018ef1c279257fb77100004800c00018005000100070000000c001b0018ef1c34939e"
    "e9da"
    ,
    "ec000000020100000000000000000000020000003400018014000180080001007f000001080002007f0000011c0002800500"
    "0100110000000600020087d600000600030015b400003400028014000180080001007f000001080002007f0000011c000280"
    "05000100110000000600020015b400000600030087d6000008000c000eecb0f908000300000002081c0009800c0001000000"
    "0000000000010c00020000000000000000801c000a800c00010000000000000000000c00020000000000000000001c001480"
    "0c00010018ef1c2756c3d80f0c00020018ef1c27923a5b410c001b0018ef1c3493be51c8"
    ,
)]
NOW = time.time()   # the store trims by the real clock too: records are recent (reset for each test)


@pytest.fixture(autouse=True)
def _now() -> None:
    """Records end around now: a NOW taken at import is minutes old by the time
    a full run reaches these tests, and the store's own age trim deletes them."""
    global NOW
    NOW = time.time()
TRANSIT = ipaddress.IPv4Network("10.12.0.0/16")


def index_of(ip: str) -> int:
    addr = ipaddress.IPv4Address(ip)
    if addr not in TRANSIT or int(addr) % 2 == 0:
        raise ValueError(ip)
    return (int(addr) - int(TRANSIT.network_address)) // 2


def parsed(raw: bytes) -> codec.CtEntry:
    [body] = list(messages(raw, codec.MSG_DESTROY))
    entry = codec.parse_entry(body)
    assert entry is not None
    return entry


def entry(orig: tuple, reply: tuple, *, status: int = codec.IPS_SEEN_REPLY, tcp_state: int | None = None,
          counters: tuple = (3, 180, 2, 120), start_ns: int = 1_000_000_000_000, stop_ns: int = 1_005_000_000_000,
          ct_id: int = 7) -> codec.CtEntry:
    proto = 6 if tcp_state is not None else 17
    return codec.CtEntry(codec.Tuple(*orig[:2], proto, *orig[2:]), codec.Tuple(*reply[:2], proto, *reply[2:]),
                         status, 0, ct_id, tcp_state, *counters, start_ns, stop_ns)


def test_kernel_destroy_events_parse_with_counters_timestamps_and_state():
    entries = [parsed(raw) for raw in DESTROYS]
    by_reason = {codec.end_reason(e): e for e in entries}
    assert set(by_reason) == {codec.CLOSED, codec.UNREPLIED, codec.RESET}
    closed = by_reason[codec.CLOSED]
    o = closed.orig
    assert (o.src, o.dst, o.proto, o.dport) == ("127.0.0.1", "127.0.0.1", 6, 5555)
    assert closed.reply.sport == 5555 and closed.reply.dport == closed.orig.sport
    assert (closed.packets_orig, closed.bytes_orig, closed.packets_reply, closed.bytes_reply) == (5, 273, 3, 164)
    assert closed.tcp_state == codec.TCP_TIME_WAIT and closed.status & codec.IPS_SEEN_REPLY
    assert 0 < closed.start_ns < closed.stop_ns
    udp = by_reason[codec.UNREPLIED]
    assert (udp.orig.proto, udp.orig.dport) == (17, 5556)
    assert (udp.packets_orig, udp.bytes_orig, udp.packets_reply) == (1, 128, 0)
    assert by_reason[codec.RESET].tcp_state == codec.TCP_CLOSE


def test_a_message_without_tuples_or_of_another_family_is_no_entry():
    assert codec.parse_entry(b"") is None
    v6 = struct.pack("=HH", 24, codec.CTA_TUPLE_ORIG | 0x8000) + struct.pack("=HH", 20, 1 | 0x8000) + \
        struct.pack("=HH", 16, 3) + bytes(12)   # CTA_IP_V6_SRC only
    assert codec.parse_entry(v6) is None


def test_end_reasons():
    tcp = (("10.12.0.1", "203.0.113.10", 40000, 80), ("203.0.113.10", "198.51.100.2", 80, 40000))
    udp = (("10.12.0.1", "203.0.113.10", 40000, 53), ("203.0.113.10", "198.51.100.2", 53, 40000))
    assert codec.end_reason(entry(*tcp, tcp_state=codec.TCP_TIME_WAIT)) == codec.CLOSED
    assert codec.end_reason(entry(*tcp, tcp_state=codec.TCP_CLOSE)) == codec.RESET
    assert codec.end_reason(entry(*tcp, tcp_state=codec.TCP_SYN_SENT, status=0)) == codec.UNREPLIED
    assert codec.end_reason(entry(*tcp, tcp_state=codec.TCP_ESTABLISHED)) == codec.FLUSHED
    assert codec.end_reason(entry(*udp)) == codec.IDLE
    assert codec.end_reason(entry(*udp, status=0)) == codec.UNREPLIED
    # last seen alive, gone at the next start: how it ended is unknown unless it had ended already
    assert codec.end_reason(entry(*tcp, tcp_state=codec.TCP_ESTABLISHED), destroyed=False) == codec.UNKNOWN
    assert codec.end_reason(entry(*tcp, tcp_state=codec.TCP_SYN_SENT, status=0), destroyed=False) == codec.UNKNOWN
    assert codec.end_reason(entry(*tcp, tcp_state=codec.TCP_TIME_WAIT), destroyed=False) == codec.CLOSED


def test_egress_flow_becomes_the_sandboxs_record_with_its_domain():
    e = entry(("10.12.0.3", "203.0.113.10", 40000, 443), ("203.0.113.10", "198.51.100.2", 443, 40000),
              tcp_state=codec.TCP_TIME_WAIT)
    where = place(e, index_of, TRANSIT)
    assert where is not None and (where.slot, where.sandbox_ip, where.direction) == (1, "10.12.0.3", EGRESS)
    r = make_record(e, where, "sbx-1", "api.test")
    assert (r.sandbox_id, r.direction, r.protocol, r.destination, r.destination_port) == (
        "sbx-1", EGRESS, "tcp", "203.0.113.10", 443)
    assert (r.packets_sent, r.bytes_sent, r.packets_received, r.bytes_received) == (3, 180, 2, 120)
    assert (r.start, r.end, r.end_reason, r.while_down, r.domain) == (1000.0, 1005.0, codec.CLOSED, False, "api.test")


def test_ingress_flow_counts_the_reply_direction_as_sent_and_names_the_guest_port():
    e = entry(("192.0.2.20", "198.51.100.2", 50000, 20000), ("10.12.0.1", "192.0.2.20", 8080, 50000),
              tcp_state=codec.TCP_CLOSE)
    where = place(e, index_of, TRANSIT)
    assert where is not None and (where.slot, where.direction) == (0, INGRESS)
    r = make_record(e, where, "sbx-0", "")
    assert (r.source, r.source_port, r.destination, r.destination_port) == ("192.0.2.20", 50000, "10.12.0.1", 8080)
    assert (r.packets_sent, r.bytes_sent, r.packets_received, r.bytes_received) == (2, 120, 3, 180)


def test_host_probes_and_foreign_flows_are_not_sandbox_flows():
    probe = entry(("10.12.0.0", "10.12.0.1", 40000, 80), ("10.12.0.1", "10.12.0.0", 80, 40000))
    assert place(probe, index_of, TRANSIT) is None
    other = entry(("198.51.100.2", "203.0.113.10", 40000, 80), ("203.0.113.10", "198.51.100.2", 80, 40000))
    assert place(other, index_of, TRANSIT) is None


def test_a_flow_belongs_to_the_sandbox_that_held_the_slot_when_it_started():
    owners = {1: ((100.0, "old"), (200.0, "new"))}
    assert owner_at(owners, 1, 150.0) == "old"     # read after the slot went to "new"
    assert owner_at(owners, 1, 199.5) == "old"     # released and reused within a second (churn)
    assert owner_at(owners, 1, 250.0) == "new"
    assert owner_at(owners, 1, 50.0) is None
    assert owner_at(owners, 2, 250.0) is None


def record(key: str, sandbox_id: str = "s1", end: float = 0.0, **over) -> FlowRecord:  # type: ignore[no-untyped-def]
    values = dict(sandbox_id=sandbox_id, direction=EGRESS, protocol="tcp", source="10.12.0.1", source_port=40000,
                  destination="203.0.113.10", destination_port=80, domain="", bytes_sent=10, bytes_received=20,
                  packets_sent=1, packets_received=2, start=end - 1, end=end, end_reason=codec.CLOSED,
                  while_down=False, key=key)
    values = {**values, **over}
    values["start"], values["end"] = NOW + values["start"], NOW + end   # offsets from now
    return FlowRecord(**values)


def test_flows_alive_at_the_last_snapshot_and_gone_now_ended_while_down():
    saved = [record("a", end_reason=codec.UNKNOWN, while_down=True), record("b", end_reason=codec.UNKNOWN)]
    [gone] = ended_while_down(saved, alive={"b"}, now=NOW + 5)
    assert (gone.end, gone.while_down, gone.bytes_received) == (NOW + 5, True, 20)
    assert gone.key.startswith("a@")   # the entry id and its start: an id comes back for a later flow


def test_store_appends_dedups_queries_and_logs(tmp_path):
    log_path = tmp_path / "flows.jsonl"
    store = FlowStore(tmp_path / "flows.db", Retention(86400, 1000, log_path))
    store.start()
    try:
        store.add([record("a", end=100.0), record("b", end=200.0), record("c", "s2", end=150.0)])
        store.add([record("a", end=100.0, bytes_sent=99)])    # the same flow again (restart overlap)
        assert store.flush()
        assert [r.key for r in store.query("s1")] == ["a", "b"]
        assert store.query("s1")[0].bytes_sent == 10
        assert [r.key for r in store.query("s1", since=NOW + 150.0)] == ["b"]
        assert [r.key for r in store.query("s1", until=NOW + 150.0)] == ["a"]
        assert [r.key for r in store.query("s1", limit=1)] == ["a"]
        assert store.query("s1")[0] == record("a", end=100.0)
        assert {p.stat().st_mode & 0o777 for p in (log_path, tmp_path / "flows.db")} == {0o600}   # tenants' data
        lines = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert [(x["key"], x["sandbox_id"], x["event"]) for x in lines] == [("a", "s1", "flow"), ("b", "s1", "flow"),
                                                                           ("c", "s2", "flow")]
        store.save_live([record("x", while_down=True), record("y", while_down=True)])
        store.opened(record("z", while_down=True))
        store.closed("x")
        store.refresh_live([record("y", while_down=True, bytes_sent=77)])
        assert store.flush()
        assert sorted((r.key, r.bytes_sent) for r in store.load_live()) == [("y", 77), ("z", 10)]
        store.save_live([record("w", while_down=True)])
        assert store.flush()
        assert [r.key for r in store.load_live()] == ["w"]
    finally:
        store.stop()


def test_store_retention_by_age_and_by_count(tmp_path):
    store = FlowStore(tmp_path / "flows.db", Retention(max_age_s=100.0, max_records=3))
    store.start()
    try:
        store.add([record(f"k{i}", end=float(i)) for i in range(6)])
        store.trim_now(now=NOW + 103.5)     # age: k0..k3 ended more than 100 s before
        assert store.flush()
        assert [r.key for r in store.query("s1")] == ["k4", "k5"]
        store.add([record(f"m{i}", end=100.0 + i) for i in range(4)])
        store.trim_now(now=NOW + 104.0)     # count: the 3 newest stay
        assert store.flush()
        assert [r.key for r in store.query("s1")] == ["m1", "m2", "m3"]
    finally:
        store.stop()


def test_store_log_rotates_past_its_size(tmp_path):
    log_path = tmp_path / "flows.jsonl"
    store = FlowStore(tmp_path / "flows.db", Retention(86400, 1000, log_path, log_max_bytes=600))
    store.start()
    try:
        for i in range(3):
            store.add([record(f"r{i}")])
            assert store.flush()
        assert (tmp_path / "flows.jsonl.1").exists()
        assert log_path.stat().st_size <= 600
    finally:
        store.stop()


def test_every_entry_read_at_start_is_alive_even_without_a_sandbox_now(tmp_path, monkeypatch):
    """A saved flow whose slot has no owner at start (released while no agent
    ran) is still in conntrack: it must not be recorded as ended."""
    from netagent.flows import reader
    from netagent.flows.recorder import FlowLinks, FlowRecorder
    bodies = [next(iter(messages(raw, codec.MSG_DESTROY))) for raw in DESTROYS]
    monkeypatch.setattr(reader, "dump", lambda sock, seq: bodies)
    recorder = FlowRecorder(FlowStore(tmp_path / "flows.db", Retention(86400, 1000)),
                            FlowLinks(None, index_of, TRANSIT, lambda ip, a: frozenset()),  # type: ignore[arg-type]
                            lambda: 10.0)
    recorder._dumper = object()  # type: ignore[assignment]
    live, alive = recorder._live_now()
    assert live == [] and alive == {codec.parse_entry(b).entry_id for b in bodies} and len(alive) == 3


def test_readings_cut_by_their_budget_go_on_where_the_last_stopped(tmp_path, monkeypatch):
    """A table too big for one reading's budget is covered over several: each
    reading starts where the previous one ran out, not at the dump's start;
    the budget counts from the end of the dump."""
    from netagent.flows import reader
    from netagent.flows import recorder as recorder_mod
    from netagent.flows.recorder import FlowLinks, FlowRecorder
    bodies = [next(iter(messages(raw, codec.MSG_DESTROY))) for raw in DESTROYS]
    ticks = iter(range(1000))
    monkeypatch.setattr(recorder_mod.time, "monotonic", lambda: float(next(ticks)))   # 1 s per look
    # the dump takes 2 s (a big table, a loaded host): the budget is the parse's, after it
    monkeypatch.setattr(reader, "dump", lambda sock, seq: (next(ticks), next(ticks), bodies)[2])
    recorder = FlowRecorder(FlowStore(tmp_path / "flows.db", Retention(86400, 1000)),
                            FlowLinks(None, index_of, TRANSIT, lambda ip, a: frozenset()),  # type: ignore[arg-type]
                            lambda: 10.0)
    recorder._dumper = object()  # type: ignore[assignment]
    seen = [recorder._live_now(budget_s=1.5)[1] for _ in range(3)]    # one entry fits in each
    assert all(len(s) == 1 for s in seen), seen
    assert set().union(*seen) == {codec.parse_entry(b).entry_id for b in bodies}

"""The pure planner and the committer, without root: typed operations in,
changes out, applied to a real SQLite store and the in-memory fake firewall."""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from netagent.addressing import CT_MARK_GENERATIONS, AddressPlan
from netagent.config import Config
from netagent.core import ops
from netagent.core.committer import Burst, Committer
from netagent.core.inventory import Inventory, Overlay
from netagent.core.planner import PlanContext, desired_elements, plan
from netagent.core.rows import Change, SlotSet
from netagent.errors import Conflict, Exhausted, InvalidArgument, NotFound, Unavailable
from netagent.events import EventLog
from netagent.firewall import elements as el
from netagent.firewall import names
from netagent.firewall.fake import FakeFirewall
from netagent.models import Protocol, SlotState
from netagent.state import StateStore

CONFIG = Config(state_dir="/tmp/unused", transit_cidr="10.12.0.0/24", host_port_range=(20000, 20002))
ADDR = AddressPlan(CONFIG)
CTX = PlanContext(ADDR, CONFIG.guest, default_internet=True)


def inventory(ready: int = 3) -> Inventory:
    return Inventory(CONFIG.host_port_range, {i: SlotState.READY for i in range(ready)})


def apply(inv: Inventory, op: ops.Operation) -> Change:
    change = plan(inv, op, CTX)
    inv.apply_change(change)
    return change


def alloc(sid: str, slot: int, spec: dict | None = None) -> ops.Allocate:
    return ops.Allocate(**{**ops.Allocate.of(sid, spec).__dict__, "slot": slot, "at": 1.0})


# ---- the planner: pure ------------------------------------------------------------


def test_allocate_plans_rows_elements_event_and_reply_without_touching_the_inventory():
    inv = inventory()
    change = plan(inv, alloc("a", 0), CTX)
    assert inv.allocations == {} and inv.slots[0] == SlotState.READY  # nothing mutated
    assert change.reply.sandbox_id == "a" and change.reply.sandbox_ip == "10.12.0.1"
    assert [type(r).__name__ for r in change.rows] == ["SlotSet", "AllocationAdded"]
    s = ADDR.slot(0)
    assert change.nft == tuple(el.add([el.Element(names.SLOT_MARK, "10.12.0.1", s.ct_mark),
                                       el.Element(names.LIVE_MARKS, s.ct_mark),
                                       el.Element(names.LIVE_MARKS, s.ct_mark_in),
                                       el.Element(names.EGRESS_OPEN, "10.12.0.1")]
                                      + el.usage_elements("10.12.0.1")))
    assert [e.type for e in change.events] == ["allocated"]
    assert change.rows[1].allocation.policy.internet is True   # host default frozen in


def test_allocate_errors_change_nothing():
    inv = inventory()
    apply(inv, alloc("a", 0))
    with pytest.raises(Conflict):
        plan(inv, alloc("a", 1), CTX)
    with pytest.raises(Unavailable, match="not a ready slot"):
        plan(inv, alloc("b", 0), CTX)      # slot 0 is taken
    with pytest.raises(Unavailable, match="not a ready slot"):
        plan(inv, alloc("b", 9), CTX)      # never built
    assert set(inv.allocations) == {"a"}


def test_bad_input_is_refused_at_the_boundary():
    for bad in ("", "UPPER", "x" * 58, None, 7):
        with pytest.raises(InvalidArgument):
            ops.Allocate.of(bad)
    with pytest.raises(InvalidArgument):
        ops.Allocate.of("a", {"bogus": 1})
    with pytest.raises(InvalidArgument):
        ops.UpdatePolicy.of("a", {"deny_out": ["203.0.113.0/33"]})
    with pytest.raises(InvalidArgument):
        ops.UpdatePolicy.of("a", {"deny_out": ["example.test"]})  # domains are allow-only
    for port, proto in ((0, "tcp"), (70000, "tcp"), (80, "sctp"), ("80", "tcp")):
        with pytest.raises(InvalidArgument):
            ops.Expose.of("a", port, proto)
    with pytest.raises(InvalidArgument, match="outside"):
        ops.Expose.of("a", 80, "tcp", 22, (20000, 20002))
    assert ops.Expose.of("a", 80, "UDP").protocol is Protocol.UDP


def test_release_removes_every_element_it_owns_and_marks_the_slot_dirty():
    inv = inventory()
    apply(inv, alloc("a", 0, {"policy": {"allow_out": ["203.0.113.0/24:443"], "internet": False}}))
    apply(inv, ops.Expose.of("a", 80))
    change = plan(inv, ops.Release.of("a"), CTX)
    deleted = {o.element for o in change.nft if o.verb == "delete"}
    assert {e.set for e in deleted} == {names.EGRESS_BLOCKED, names.ALLOW_PORT, names.PORT_DNAT, names.SLOT_MARK,
                                        names.LIVE_MARKS}
    # the usage counters stay until the final count is read; closing them cleans the slot
    assert change.reply is True and change.clean_slots == () and change.close_usage == (("a", 0, "10.12.0.1"),)
    inv.apply_change(change)
    assert inv.allocations == {} and inv.slots[0] == SlotState.DIRTY and not inv.host_ports[Protocol.TCP]
    assert plan(inv, ops.Release.of("a"), CTX) == Change(reply=False)   # idempotent: nothing to do


def test_expose_picks_free_host_ports_refuses_conflicts_and_exhausts():
    inv = inventory()
    apply(inv, alloc("a", 0))
    apply(inv, alloc("b", 1))
    p1 = apply(inv, ops.Expose.of("a", 80)).reply
    assert p1.host_port == 20000
    assert plan(inv, ops.Expose.of("a", 80), CTX) == Change(reply=p1)   # retry: same port, no change
    with pytest.raises(Conflict, match="already exposed"):
        plan(inv, ops.Expose.of("a", 80, "tcp", 20001, CONFIG.host_port_range), CTX)
    with pytest.raises(Conflict, match="already used"):
        plan(inv, ops.Expose.of("b", 81, "tcp", 20000, CONFIG.host_port_range), CTX)
    assert apply(inv, ops.Expose.of("b", 81)).reply.host_port == 20001
    assert apply(inv, ops.Expose.of("b", 82)).reply.host_port == 20002
    with pytest.raises(Exhausted, match="host port"):
        plan(inv, ops.Expose.of("b", 83), CTX)
    assert apply(inv, ops.Expose.of("b", 83, "udp")).reply.host_port == 20000  # UDP has its own ports
    with pytest.raises(NotFound):
        plan(inv, ops.Expose.of("nobody", 80), CTX)


def test_unexpose_frees_the_host_port_and_the_cursor_moves_on():
    inv = inventory()
    apply(inv, alloc("a", 0))
    apply(inv, ops.Expose.of("a", 80))
    change = apply(inv, ops.Unexpose.of("a", 80))
    assert change.reply is True and change.nft == tuple(el.delete([el.port_element(ADDR.slot(0), "tcp", 20000, 80)]))
    assert plan(inv, ops.Unexpose.of("a", 80), CTX).reply is False
    assert apply(inv, ops.Expose.of("a", 81)).reply.host_port == 20001  # not the port just freed
    with pytest.raises(NotFound):
        plan(inv, ops.Unexpose.of("nobody", 80), CTX)


def test_policy_change_swaps_elements_and_flushes_only_when_it_narrows():
    inv = inventory()
    apply(inv, alloc("a", 0, {"policy": {"allow_out": ["allowed.test"], "internet": False}}))
    widen = apply(inv, ops.UpdatePolicy.of("a", {"allow_out": ["allowed.test", "203.0.113.7"], "internet": False}))
    assert widen.dead_marks == () and widen.drop_fqdn == ()
    assert el.Op("add", el.Element(names.ALLOW_NET, ("10.12.0.1", "203.0.113.7"))) in widen.nft
    narrow = apply(inv, ops.UpdatePolicy.of("a", {"internet": False}))
    assert narrow.dead_marks == (ADDR.slot(0).ct_mark,) and narrow.drop_fqdn == ("10.12.0.1",)
    assert widen.rows[0].mark_generation == 0 and inv.allocations["a"].mark_generation == 1
    assert inv.allocations["a"].compiled.domains == ()
    same = plan(inv, ops.UpdatePolicy.of("a", {"internet": False}), CTX)
    assert same.nft == () and [e.type for e in same.events] == ["policy_updated"]
    with pytest.raises(NotFound):
        plan(inv, ops.UpdatePolicy.of("nobody", {}), CTX)


def test_a_burst_plans_against_its_own_earlier_changes_on_a_draft():
    inv = inventory()
    draft = inv.fork()
    apply(draft, alloc("a", 0))
    apply(draft, ops.Expose.of("a", 80))
    assert apply(draft, ops.Expose.of("a", 81)).reply.host_port == 20001
    assert inv.allocations == {} and inv.slots[0] == SlotState.READY and not inv.host_ports[Protocol.TCP]
    assert len(draft.allocations) == 1 and len(draft.slots) == 3


def test_overlay_reads_through_and_hides_deletions():
    base = {1: "a", 2: "b"}
    over = Overlay(base)
    over[3] = "c"
    del over[1]
    assert dict(over) == {2: "b", 3: "c"} and len(over) == 2 and 1 not in over
    assert base == {1: "a", 2: "b"}
    with pytest.raises(KeyError):
        del over[1]


def test_desired_elements_cover_live_slots_and_allocations():
    inv = inventory(2)
    inv.apply_change(plan(inv, ops.SlotGone(1), CTX))
    apply(inv, alloc("a", 0))
    apply(inv, ops.Expose.of("a", 80))
    want = set(desired_elements(inv, ADDR))
    assert want == set(el.slot_elements(ADDR.slot(0))) | set(el.mark_elements(ADDR.slot(0), 0)) | {
        el.Element(names.EGRESS_OPEN, "10.12.0.1"), el.port_element(ADDR.slot(0), "tcp", 20000, 80),
        *el.usage_elements("10.12.0.1")}


# ---- the committer: SQLite + fake firewall -----------------------------------------


class Harness:
    def __init__(self, tmp_path):
        self.store = StateStore(tmp_path)
        self.fw = FakeFirewall("na")
        self.fw.reload("table inet na {}", [], [])
        self.inv = inventory()
        with self.store.transaction() as tx:
            for idx, state in self.inv.slots.items():
                tx.set_slot(idx, state)
        self.committer = Committer(self.store, EventLog(self.store), asyncio.Lock(), lambda: self.inv,
                                   lambda: CTX, self.apply, self.after)
        self.committed: list[type] = []

    async def apply(self, burst: Burst) -> None:
        self.fw.apply(burst.nft)

    async def after(self, done) -> None:
        self.committed += [type(op) for op, _ in done]

    def rows(self) -> tuple:
        db = self.store.db
        return (list(db.execute("SELECT idx, state FROM slots ORDER BY idx")),
                list(db.execute("SELECT sandbox_id, slot_idx FROM allocations")),
                list(db.execute("SELECT sandbox_id, guest_port, host_port FROM ports")))


async def run_burst(h: Harness, *op_list: ops.Operation) -> list:
    task = asyncio.create_task(h.committer.run())
    try:
        return await asyncio.gather(*(h.committer.submit(op) for op in op_list), return_exceptions=True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_burst_is_one_sqlite_and_one_nft_transaction(tmp_path):
    h = Harness(tmp_path)
    before = h.fw.transactions
    results = await run_burst(h, alloc("a", 0), alloc("b", 1), alloc("c", 9))
    assert isinstance(results[2], Unavailable)        # a refused op fails alone (slot 9 was never built)
    assert [r.sandbox_id for r in results[:2]] == ["a", "b"]
    assert h.committer.commits == 1 and h.fw.transactions - before == 1
    assert h.rows() == ([(0, "allocated"), (1, "allocated"), (2, "ready")], [("a", 0), ("b", 1)], [])
    assert set(h.inv.allocations) == {"a", "b"} and h.committed == [ops.Allocate, ops.Allocate]
    assert [e[2] for e in h.store.events_after(0)] == ["allocated", "allocated"]


async def test_a_sandboxs_second_operation_waits_for_the_next_burst_in_order(tmp_path):
    """Two ops on one sandbox in one nft transaction would delete and re-add its
    elements, which the kernel refuses: they go in consecutive bursts."""
    h = Harness(tmp_path)
    results = await run_burst(h, alloc("a", 0), ops.Expose.of("a", 80), alloc("b", 1), ops.Expose.of("a", 81),
                              ops.Unexpose.of("a", 80))
    assert [type(r).__name__ for r in results] == ["Network", "ExposedPort", "Network", "ExposedPort", "bool"]
    assert h.committer.commits == 4          # [a, b], [expose 80], [expose 81], [unexpose 80]
    assert h.committed == [ops.Allocate, ops.Allocate, ops.Expose, ops.Expose, ops.Unexpose]
    assert h.rows()[2] == [("a", 81, 20001)] and h.fw.has(el.port_element(ADDR.slot(0), "tcp", 20001, 81))


async def test_a_failed_nft_transaction_rolls_back_sqlite_and_leaves_the_inventory(tmp_path):
    h = Harness(tmp_path)
    await run_burst(h, alloc("a", 0))
    state, content, events = h.rows(), h.fw.content(), h.store.events_after(0)
    h.fw.fail_next = "injected"
    results = await run_burst(h, ops.Expose.of("a", 80), alloc("b", 1), alloc("c", 2))
    assert all(isinstance(r, Unavailable) for r in results), results
    assert h.rows() == state and h.fw.content() == content and h.store.events_after(0) == events
    assert set(h.inv.allocations) == {"a"} and not h.inv.allocations["a"].ports
    assert h.inv.slots[1] == h.inv.slots[2] == SlotState.READY and not h.inv.host_ports[Protocol.TCP]
    assert h.committed == [ops.Allocate]               # no hooks ran for the failed burst
    assert (await run_burst(h, ops.Expose.of("a", 80)))[0].host_port == 20000  # and it is usable again



def test_port_access_is_planned_like_any_change_and_the_token_never_passes_the_boundary():
    inv = inventory()
    apply(inv, alloc("a", 0))
    op = ops.SetPortAccess.of("a", 3000, public=False, access_token="t" * 20)
    assert "t" * 20 not in repr(op) and len(op.token_sha256 or "") == 64      # hashed at the boundary
    change = apply(inv, op)
    assert change.nft == () and change.reply.public is False and inv.allocations["a"].access[3000] == change.reply
    with pytest.raises(InvalidArgument, match="private port needs an access_token"):
        plan(inv, ops.SetPortAccess.of("a", 3000, access_token=""), CTX)       # clearing it would expose it
    with pytest.raises(InvalidArgument):
        ops.SetPortAccess.of("a", 3000, access_token="short")
    with pytest.raises(NotFound):
        plan(inv, ops.SetPortAccess.of("nobody", 3000, public=True), CTX)
    assert apply(inv, ops.SetPortAccess.of("a", 3000, public=True)).reply.token_sha256 == op.token_sha256



SNI_TOKEN = "k7q2m9x4p8w3z6r1t5v0"    # lowercase letters and digits


def test_port_mode_tcp_and_the_sni_credential_of_a_private_tcp_port(tmp_path):
    """mode (#24): http by default, tcp on request, stored; a private tcp port's token
    must fit its SNI label {port}--{token}-{sandboxId}, given in the call that makes it so."""
    store = StateStore(tmp_path)
    inv = inventory()
    with store.transaction() as tx:
        for change in (apply(inv, alloc("a", 0)), apply(inv, ops.SetPortAccess.of("a", 5432, mode="tcp"))):
            for row in change.rows:
                tx.write(row)
    assert change.reply.mode == "tcp" and change.reply.public and change.nft == ()
    with pytest.raises(InvalidArgument, match="mode"):
        ops.SetPortAccess.of("a", 5432, mode="udp")
    for token in ("Upper-case-token-0123", "has-dashes-0123456789", "x" * 60):   # not [a-z0-9], too long
        with pytest.raises(InvalidArgument, match="SNI"):
            plan(inv, ops.SetPortAccess.of("a", 5432, public=False, access_token=token), CTX)
    apply(inv, ops.SetPortAccess.of("a", 3000, public=False, access_token="http-only-token-0123"))
    with pytest.raises(InvalidArgument, match="same call"):          # http private -> tcp without the token
        plan(inv, ops.SetPortAccess.of("a", 3000, mode="tcp"), CTX)
    ok = apply(inv, ops.SetPortAccess.of("a", 5432, public=False, access_token=SNI_TOKEN)).reply
    assert not ok.public and ok.mode == "tcp"
    assert apply(inv, ops.SetPortAccess.of("a", 5432, host_mask="")).reply == ok     # stays private tcp
    assert apply(inv, ops.SetPortAccess.of("a", 8080)).reply.mode == "http"          # the default
    store.close()
    assert StateStore(tmp_path).load().allocations["a"].access[5432].mode == "tcp"


def test_a_state_file_from_before_the_mode_column_reads_as_http(tmp_path):
    old = sqlite3.connect(tmp_path / "state.db")
    old.executescript("CREATE TABLE port_access (sandbox_id TEXT NOT NULL, guest_port INTEGER NOT NULL, "
                      "public INTEGER NOT NULL, token_sha256 TEXT NOT NULL, host_mask TEXT NOT NULL, "
                      "PRIMARY KEY (sandbox_id, guest_port));"
                      "INSERT INTO port_access VALUES ('a', 3000, 1, '', '');")
    old.close()
    store = StateStore(tmp_path)
    assert store.load_port_access()[("a", 3000)].mode == "http"
    store.close()

def test_paused_is_planned_stored_and_repeated_calls_write_nothing(tmp_path):
    """SetPaused (#24): a row only when it changes; wake only counts while paused; it
    survives a restart (the state store)."""
    store = StateStore(tmp_path)
    inv = inventory()
    with store.transaction() as tx:
        for change in (apply(inv, alloc("a", 0)), apply(inv, ops.SetPaused.of("a", True, wake=True))):
            for row in change.rows:
                tx.write(row)
    assert (inv.allocations["a"].paused, inv.allocations["a"].wake) == (True, True) and change.nft == ()
    assert plan(inv, ops.SetPaused.of("a", True, wake=True), CTX) == Change(reply=False)
    assert ops.SetPaused.of("a", False, wake=True).wake is False
    with pytest.raises(NotFound):
        plan(inv, ops.SetPaused.of("nobody", True), CTX)
    with pytest.raises(InvalidArgument):
        ops.SetPaused.of("a", "yes")
    store.close()
    store = StateStore(tmp_path)
    loaded = store.load().allocations["a"]
    assert (loaded.paused, loaded.wake) == (True, True)
    with store.transaction() as tx:
        for row in apply(inv, ops.SetPaused.of("a", False)).rows:
            tx.write(row)
    store.close()
    assert StateStore(tmp_path).load().allocations["a"].paused is False


# ---- walk-free flow kills (#15): the marks the planner emits ----------------------------


def loaded_firewall() -> FakeFirewall:
    fw = FakeFirewall()
    fw.reload("table inet na {}", [], [])
    return fw


def live_marks(fw: FakeFirewall) -> set:
    return set(fw.sets[names.LIVE_MARKS])


def test_narrowing_replaces_the_egress_mark_in_the_same_transaction_and_keeps_the_ingress_mark():
    inv = inventory()
    fw = loaded_firewall()
    fw.apply(list(apply(inv, alloc("a", 0)).nft))
    s = ADDR.slot(0)
    assert live_marks(fw) == {s.ct_mark, s.ct_mark_in} and fw.sets[names.SLOT_MARK]["10.12.0.1"] == s.ct_mark
    fw.apply(list(apply(inv, ops.UpdatePolicy.of("a", {"internet": False})).nft))
    new = s.egress_mark(1)
    assert new not in (s.ct_mark, s.ct_mark_in)
    assert live_marks(fw) == {new, s.ct_mark_in}            # the old egress flows are dead
    assert fw.sets[names.SLOT_MARK]["10.12.0.1"] == new      # new flows get the new mark
    widen = apply(inv, ops.UpdatePolicy.of("a", {"internet": True}))
    assert widen.dead_marks == () and inv.allocations["a"].mark_generation == 1  # widening kills nothing


def test_release_removes_both_live_marks_and_a_reused_slot_starts_a_fresh_allocation():
    inv = inventory()
    fw = loaded_firewall()
    fw.apply(list(apply(inv, alloc("a", 0)).nft))
    fw.apply(list(apply(inv, ops.UpdatePolicy.of("a", {"internet": False})).nft))
    fw.apply(list(apply(inv, ops.Release.of("a")).nft))
    assert live_marks(fw) == set() and fw.sets[names.SLOT_MARK] == {}
    inv.apply(SlotSet(0, SlotState.READY))
    fw.apply(list(apply(inv, alloc("b", 0)).nft))
    assert live_marks(fw) == {ADDR.slot(0).ct_mark, ADDR.slot(0).ct_mark_in}


def test_egress_marks_are_unique_per_slot_and_generation_and_the_clean_mask_matches_all_of_a_slots():
    marks = {ADDR.slot(i).egress_mark(g): (i, g) for i in range(ADDR.capacity) for g in range(CT_MARK_GENERATIONS)}
    assert len(marks) == ADDR.capacity * CT_MARK_GENERATIONS
    ins = {ADDR.slot(i).ct_mark_in for i in range(ADDR.capacity)}
    assert not ins & set(marks)
    s, other = ADDR.slot(3), ADDR.slot(4)
    value, mask = s.any_mark
    for m in (s.egress_mark(0), s.egress_mark(200), s.ct_mark_in):
        assert m & mask == value
    for m in (other.egress_mark(7), other.ct_mark_in):
        assert m & mask != value


def test_the_mark_generation_survives_a_restart(tmp_path):
    store = StateStore(tmp_path)
    inv = inventory()
    with store.transaction() as tx:
        for row in apply(inv, alloc("a", 0)).rows:
            tx.write(row)
    with store.transaction() as tx:
        for row in apply(inv, ops.UpdatePolicy.of("a", {"internet": False})).rows:
            tx.write(row)
    store.close()
    assert StateStore(tmp_path).load().allocations["a"].mark_generation == 1

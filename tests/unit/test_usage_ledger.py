"""The usage ledger (pure): a restart of the kernel's counters never makes a total go back."""
from __future__ import annotations

from netagent.core import ops
from netagent.core.inventory import Inventory
from netagent.core.planner import plan
from netagent.core.rows import SlotSet, UsageClosed
from netagent.firewall import elements as el
from netagent.firewall import names
from netagent.firewall.set_dump import CutDump
from netagent.models import SlotState
from netagent.usage.ledger import KEYS, UNREAD, Counts, Entry, observe, reading_of


def counts(n: int) -> Counts:
    return Counts.of({k: (n, n * 100) for k in KEYS})


def test_a_growing_counter_replaces_the_last_reading():
    e = observe(Entry("10.12.0.1"), counts(3), epoch=7)
    e = observe(e, counts(5), epoch=7)
    assert e.total == counts(5) and e.base == Counts()


def test_a_counter_that_restarted_is_folded_into_the_base():
    e = observe(Entry("10.12.0.1"), counts(5), epoch=7)
    assert observe(e, counts(2), epoch=7).total == counts(7)     # lower: elements re-created
    assert observe(e, counts(9), epoch=8).total == counts(14)    # another table, even if higher
    gone = observe(e, None, epoch=7)                              # element missing
    assert gone.total == counts(5) and observe(gone, counts(1), epoch=7).total == counts(6)
    flushed = observe(e, None, epoch=None)                        # no table at all
    assert observe(flushed, counts(4), epoch=9).total == counts(9)


def test_an_entry_round_trips_through_json():
    e = observe(observe(Entry("10.12.0.1"), counts(5), 7), counts(1), 7)
    assert Entry.from_json("10.12.0.1", e.to_json()) == e
    assert Entry.from_json("10.12.0.1", {}) == Entry("10.12.0.1")


def test_reading_of_needs_every_set():
    by_set = {name: {"10.12.0.1": (1, 2)} for name in names.USAGE_SETS.values()}
    assert reading_of("10.12.0.1", by_set) == Counts.of({k: (1, 2) for k in KEYS})
    del by_set["usage_host_sent"]["10.12.0.1"]
    assert reading_of("10.12.0.1", by_set) is None


def test_an_element_left_out_of_a_cut_dump_is_unread_not_gone():
    """A dump commits cut can leave out elements still there: gone would fold
    the sandbox's counts into its base, and the next reading would count them twice."""
    by_set = {name: {"10.12.0.1": (1, 2)} for name in names.USAGE_SETS.values()}
    by_set["usage_host_sent"] = CutDump()
    assert reading_of("10.12.0.1", by_set) is UNREAD
    by_set["usage_host_sent"] = CutDump({"10.12.0.1": (1, 2)})          # read all the same: counted
    assert reading_of("10.12.0.1", by_set) == Counts.of({k: (1, 2) for k in KEYS})
    by_set["usage_host_sent"] = CutDump()
    del by_set["usage_egress_sent"]["10.12.0.1"]                        # and gone from a whole dump: gone
    assert reading_of("10.12.0.1", by_set) is None


def test_close_usage_records_the_final_count_removes_the_counters_then_cleans():
    final = counts(4).as_dict()
    inv = Inventory((20000, 20010))
    inv.apply(SlotSet(3, SlotState.DIRTY))
    change = plan(inv, ops.CloseUsage("a", "10.12.0.1", final, 3), None)  # type: ignore[arg-type]
    assert change.rows == (UsageClosed("a"),) and change.clean_slots == (3,)
    assert {o.element for o in change.nft if o.verb == "delete"} == set(el.usage_elements("10.12.0.1"))
    assert [(e.type, e.data) for e in change.events] == [("usage_final", {"usage": final})]
    assert plan(Inventory((20000, 20010)), ops.CloseUsage("a", "10.12.0.1", final, None), None).clean_slots == ()  # type: ignore[arg-type]


def test_a_retried_close_usage_cleans_the_slot_only_once():
    """Its first try committed and the slot was cleaned (READY) or torn down:
    a second clean of it would fight the next tenant or a missing veth."""
    final = counts(4).as_dict()
    inv = Inventory((20000, 20010))
    inv.apply(SlotSet(3, SlotState.READY))
    assert plan(inv, ops.CloseUsage("a", "10.12.0.1", final, 3), None).clean_slots == ()  # type: ignore[arg-type]
    assert plan(Inventory((20000, 20010)), ops.CloseUsage("a", "10.12.0.1", final, 3), None).clean_slots == ()  # type: ignore[arg-type]


def test_usage_to_proto_puts_every_counter_in_its_own_field():
    from netagent.api import convert as cv
    data = {f"{path}_{way}": {"packets": 10 * i + j, "bytes": 1000 * i + j}
            for i, path in enumerate(("egress", "ingress", "host")) for j, way in enumerate(("sent", "received"))}
    m = cv.usage_to_proto("s-1", data)
    assert m.sandbox_id == "s-1"
    for path in ("egress", "ingress", "host"):
        for way in ("sent", "received"):
            c = getattr(getattr(m, path), way)
            assert (c.packets, c.bytes) == (data[f"{path}_{way}"]["packets"], data[f"{path}_{way}"]["bytes"])

"""Element changes as one raw nf_tables netlink batch (firewall/netlink_driver.py)
against a real kernel, in a netns each test makes (and removes): for every
kind of element the agent changes (plain keys, ifnames, marks, concatenations,
concatenated intervals, map data, timeouts, counter sets), the raw batch and
libnftables leave the same set contents (`nft -j list set`); a batch with one
bad element changes nothing and says which message the kernel refused; the
ruleset generation advances once per batch; a change the batch does not encode
(a one-field interval set) goes through libnftables whole; the event loop's
sender (firewall/loop_batch.py) does the same from another thread's netns."""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator

import pytest

from netagent.errors import Unavailable
from netagent.firewall import elements as el
from netagent.firewall import names
from netagent.firewall.driver import HostTable
from netagent.firewall.generation import GenerationWatch, read_generation
from netagent.firewall.loop_batch import LoopBatcher
from netagent.firewall.netlink_driver import NetlinkHostTable
from netagent.firewall.ruleset import read_rules
from netagent.operator.kernel import in_netns
from tests.datapath.helpers import scratch_netns
from tests.testbed import sh

E = el.Element
IP, IP2 = "10.12.0.2", "10.12.0.6"
MARK = 0x4E410001

# One change list per kind of element; each is applied to both tables, then
# (where a delete follows) taken out again by the same driver.
KINDS: dict[str, list[E]] = {
    "ipv4": [E(names.EGRESS_OPEN, IP), E(names.EGRESS_BLOCKED, IP2), E(names.DNS_LOCKED, IP), E(names.SNI_CHECK, IP)],
    "ifname": [E(names.SBX_IFACES, "na0h"), E(names.SBX_IFACES, "na1234567890123")],
    "ifname . ipv4": [E(names.SBX_SRC, ("na0h", IP)), E(names.SBX_SRC, ("na1h", IP2))],
    "mark": [E(names.LIVE_MARKS, MARK), E(names.LIVE_MARKS, MARK | 0x80000000)],
    "map ipv4 : mark": [E(names.SLOT_MARK, IP, MARK), E(names.SLOT_MARK_IN, IP2, MARK | 0x80000000)],
    "map ipv4 : ipv4": [E(names.EGRESS_SNAT, IP, "203.0.113.5")],
    "map proto . port : ipv4 . port": [E(names.PORT_DNAT, ("tcp", 20001), (IP, 8080)),
                                       E(names.PORT_DNAT, ("udp", 20002), (IP2, 53))],
    "interval ipv4 . ipv4": [E(names.ALLOW_NET, (IP, "192.0.2.0/24")), E(names.ALLOW_NET, (IP, "198.51.100.7")),
                             E(names.DENY_NET, (IP2, "203.0.113.128/25"))],
    "interval ipv4 . ipv4 . proto . port": [E(names.ALLOW_PORT, (IP, "192.0.2.0/24", "tcp", 443)),
                                            E(names.ALLOW_PORT, (IP, "192.0.2.0/24", "udp", 443)),
                                            E(names.DENY_PORT, (IP2, "198.51.100.9", "tcp", 25))],
    "ipv4 . ipv4 . port (timeout set)": [E(names.INTERCEPT_DST, (IP, "192.0.2.10", 443))],
    "counter": [E(s, IP) for s in names.USAGE_SETS.values()],
}


def table_text(table: str) -> str:
    """Every set and map as rules/netagent.nft declares them, in a table of their own."""
    declarations = re.findall(r"\b(?:set|map) \w+ \{[^}]*\}", read_rules("netagent.nft"))
    assert {re.match(r"\w+ (\w+)", d).group(1) for d in declarations} >= set(names.ALL)  # type: ignore[union-attr]
    return f"table inet {table} {{\n" + "\n".join(declarations) + "\n}\n"


def listed(ns: str, table: str, name: str) -> list:
    kind = "map" if name in names.MAPS else "set"
    out = json.loads(sh.run("nft", "-j", "list", kind, "inet", table, name, ns=ns).stdout)
    body = next(o[kind] for o in out["nftables"] if kind in o)
    items = body.get("elem", [])
    for item in items:   # the time left differs between two tables
        if isinstance(item, dict) and "elem" in item:
            item["elem"].pop("expires", None)
    return sorted(json.dumps(i, sort_keys=True) for i in items)


@pytest.fixture
def ns() -> Iterator[str]:
    with scratch_netns("nlb") as name:
        sh.run("nft", "-f", "-", ns=name, input=table_text("raw") + table_text("lib"))
        yield name


def on(ns: str, fn: Callable[[], object]) -> object:
    return in_netns(f"/run/netns/{ns}", fn)


def both(ns: str, act: Callable[[HostTable], None]) -> NetlinkHostTable:
    def run() -> NetlinkHostTable:
        raw, lib = NetlinkHostTable("raw"), HostTable("lib")
        act(raw)
        act(lib)
        return raw
    return on(ns, run)  # type: ignore[return-value]


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_batch_leaves_what_libnftables_leaves(ns, kind):
    elements = KINDS[kind]
    sets = sorted({e.set for e in elements})
    raw = both(ns, lambda fw: fw.apply(el.add(elements)))
    assert raw.raw_batches == 1 and raw.fallbacks == 0
    for name in sets:
        assert listed(ns, "raw", name) == listed(ns, "lib", name) != []
    # an idempotent delete (add, then delete) of the first one, and the rest stay
    raw = both(ns, lambda fw: fw.apply(el.delete(elements[:1])))
    assert raw.raw_batches == 1
    for name in sets:
        assert listed(ns, "raw", name) == listed(ns, "lib", name)
    assert len(sum((listed(ns, "raw", name) for name in sets), [])) == len(elements) - 1


def test_admissions_with_timeouts_are_what_libnftables_admits(ns):
    keys = [((IP, "192.0.2.9"), 30), ((IP2, "198.51.100.1"), 600)]
    raw = both(ns, lambda fw: fw.admit(names.FQDN_IPS, keys))
    assert raw.raw_batches == 1
    assert listed(ns, "raw", names.FQDN_IPS) == listed(ns, "lib", names.FQDN_IPS)
    timeouts = sorted(json.loads(i)["elem"]["timeout"] for i in listed(ns, "raw", names.FQDN_IPS))
    assert timeouts == [30, 600]
    both(ns, lambda fw: fw.admit(names.FQDN_IPS, [((IP, "192.0.2.9"), 90)]))   # restarts with the new timeout
    assert listed(ns, "raw", names.FQDN_IPS) == listed(ns, "lib", names.FQDN_IPS)
    assert sorted(json.loads(i)["elem"]["timeout"] for i in listed(ns, "raw", names.FQDN_IPS)) == [90, 600]


def test_a_batch_with_one_bad_element_changes_nothing(ns):
    before = {name: listed(ns, "raw", name) for name in (names.EGRESS_OPEN, names.SLOT_MARK, names.LIVE_MARKS)}
    good = [E(names.EGRESS_OPEN, IP), E(names.LIVE_MARKS, MARK)]
    on(ns, lambda: NetlinkHostTable("raw").apply(el.add([E(names.SLOT_MARK, IP2, 1)])))

    def bad() -> None:
        # the same key with other data: the kernel refuses that one message (EEXIST)
        NetlinkHostTable("raw").apply(el.add(good + [E(names.SLOT_MARK, IP2, 2)]))
    with pytest.raises(Unavailable, match=r"nothing changed: add element inet raw slot_mark \(1\): File exists"):
        on(ns, bad)
    assert listed(ns, "raw", names.EGRESS_OPEN) == before[names.EGRESS_OPEN]
    assert listed(ns, "raw", names.LIVE_MARKS) == before[names.LIVE_MARKS]
    assert len(listed(ns, "raw", names.SLOT_MARK)) == 1
    # a set that went away after the shapes were read
    with pytest.raises(Unavailable, match="No such file or directory"):
        on(ns, lambda: _apply_after_delete(ns))


def _apply_after_delete(ns: str) -> None:
    fw = NetlinkHostTable("raw")
    fw.apply(el.add([E(names.EGRESS_OPEN, IP2)]))   # reads the shapes
    sh.run("nft", "delete", "set", "inet", "raw", names.DNS_LOCKED, ns=ns)
    fw.apply(el.add([E(names.EGRESS_BLOCKED, IP), E(names.DNS_LOCKED, IP)]))


def test_the_generation_advances_once_per_batch(ns):
    def run() -> list[int]:
        fw = NetlinkHostTable("raw")
        fw.apply(el.add([E(names.EGRESS_OPEN, IP)]))   # the shapes are read before the first batch
        steps = []
        for elements in KINDS.values():
            before = read_generation()
            fw.apply(el.add(elements) + el.delete(elements[:1]))
            steps.append(read_generation() - before)
        return steps
    assert on(ns, run) == [1] * len(KINDS)


def test_a_change_the_batch_does_not_encode_goes_through_libnftables_whole(ns):
    ops = el.add([E(names.ALWAYS_DENY, "192.0.2.0/24"), E(names.EGRESS_OPEN, IP)])
    raw = both(ns, lambda fw: fw.apply(ops))
    assert (raw.raw_batches, raw.fallbacks) == (0, 1)
    for name in (names.ALWAYS_DENY, names.EGRESS_OPEN):
        assert listed(ns, "raw", name) == listed(ns, "lib", name) != []


def test_the_loop_sends_batches_on_a_socket_made_in_the_host_netns(ns):
    """LoopBatcher: made on a thread in the netns, used from this test's thread
    (another netns); the batch lands in the netns' table, its generation is
    recorded as ours, and every case it does not take is handed back (None)."""
    watch = GenerationWatch()

    def make() -> tuple[NetlinkHostTable, LoopBatcher, int]:
        fw = NetlinkHostTable("raw", watch=watch)
        batcher = fw.loop_batcher()
        assert batcher.apply(el.add([E(names.EGRESS_OPEN, IP)])) is None   # no shapes read yet
        fw.apply(el.add([E(names.EGRESS_OPEN, IP)]))                       # reads them
        with watch.lock:
            watch.listed(read_generation())
        return fw, batcher, read_generation()
    fw, batcher, generation = on(ns, make)  # type: ignore[misc]
    try:
        elements = KINDS["interval ipv4 . ipv4 . proto . port"] + KINDS["mark"]
        assert batcher.apply(el.add(elements)) is not None
        assert listed(ns, "raw", names.ALLOW_PORT) != [] and len(listed(ns, "raw", names.LIVE_MARKS)) == 2
        assert watch.verified == generation + 1   # our own commit: no drift check needed
        with watch.lock:   # held by another thread: never wait for it on the loop
            assert batcher.apply(el.delete(KINDS["mark"])) is None
        assert batcher.apply(el.add([E(names.ALWAYS_DENY, "192.0.2.0/24")])) is None   # not encoded
        assert len(listed(ns, "raw", names.LIVE_MARKS)) == 2 and listed(ns, "raw", names.ALWAYS_DENY) == []
        with pytest.raises(Unavailable, match="slot_mark"):
            batcher.apply(el.add([E(names.SLOT_MARK, IP, 1), E(names.SLOT_MARK, IP, 2)]))
        assert fw.shapes is None and listed(ns, "raw", names.SLOT_MARK) == []
        assert (batcher.sent, batcher.handed_back) == (1, 3)
    finally:
        batcher.close()

"""The raw ctnetlink flushes against a real kernel, in netns the test makes
(and removes): entries inserted with `conntrack -I`, then flushed by mark on
the thread's kept socket, or all of a visited netns on a socket of its own."""
from __future__ import annotations

import pytest

from netagent.datapath import conntrack
from netagent.operator.kernel import in_netns
from tests.datapath.helpers import conntrack_count, scratch_netns
from tests.testbed import sh


def insert(ns: str, sport: int, mark: int) -> None:
    sh.run("conntrack", "-I", "-s", "192.0.2.1", "-d", "192.0.2.2", "-p", "tcp", "--sport", str(sport),
           "--dport", "80", "--state", "ESTABLISHED", "-u", "SEEN_REPLY", "-t", "300", "--mark", str(mark), ns=ns)


@pytest.fixture
def two_netns():
    with scratch_netns("ctfa") as ns, scratch_netns("ctfb") as other:
        yield ns, other


def test_flush_mark_deletes_exactly_the_entries_matching_under_the_mask(two_netns):
    ns, other = two_netns
    insert(ns, 1001, 0x10005)
    insert(ns, 1002, 0x20005)     # same low bits, another generation
    insert(ns, 1003, 0x10006)
    insert(other, 1001, 0x10005)  # another netns: untouched
    in_netns(f"/run/netns/{ns}", lambda: conntrack.flush_mark(0x5, 0xFFFF))
    assert conntrack_count(ns, "--mark", "0x5/0xffff") == 0
    assert conntrack_count(ns) == 1
    assert conntrack_count(other) == 1
    in_netns(f"/run/netns/{ns}", lambda: conntrack.flush_mark(0x10006))
    assert conntrack_count(ns) == 0


def test_flush_all_empties_only_the_visited_netns(two_netns):
    ns, other = two_netns
    for port in range(2000, 2010):
        insert(ns, port, port)
    insert(other, 1, 1)
    in_netns(f"/run/netns/{ns}", conntrack.flush_all)
    assert conntrack_count(ns) == 0
    assert conntrack_count(other) == 1


def test_bad_marks_are_refused_before_any_io():
    with pytest.raises(ValueError):
        conntrack.flush_request(1 << 32)
    with pytest.raises(ValueError):
        conntrack.flush_mark(-1)

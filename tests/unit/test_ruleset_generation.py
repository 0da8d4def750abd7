"""The ruleset watcher lists the table only when a commit not our own happened."""
from __future__ import annotations

import struct

import pytest

from netagent.core.hostsync import FULL_CHECK_EVERY_S, HostTableKeeper
from netagent.firewall import generation as gen


def newgen_reply(seq: int, generation: int) -> bytes:
    attr = struct.pack("=HH", 8, gen.NFTA_GEN_ID) + struct.pack("!I", generation)
    body = struct.pack("=BBH", 0, 0, 0) + attr
    kind = (gen.NFNL_SUBSYS_NFTABLES << 8) | gen.NFT_MSG_NEWGEN
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_the_reply_gives_the_generation_and_errors_raise() -> None:
    assert gen.answer(newgen_reply(1, 4242)) == 4242
    assert gen.answer(newgen_reply(7, 4242)) is None          # another request's reply
    error = struct.pack("=IHHII", 36, gen.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    with pytest.raises(OSError):
        gen.answer(error)


def test_only_our_own_next_commit_moves_the_verified_generation() -> None:
    watch = gen.GenerationWatch()
    watch.own_commit(5)
    assert watch.verified is None          # nothing verified yet: a commit proves nothing
    watch.verified = 5
    watch.own_commit(6)
    assert watch.unchanged(6)
    watch.own_commit(8)                    # generation 7 was someone else's
    assert not watch.unchanged(8) and watch.verified == 6


def test_our_commits_during_a_listing_still_count_once_it_verifies() -> None:
    """Steady churn: a listing reads generation 10, our commits 11 and 12
    land while it runs, then it matches. Without them remembered, every
    later check listed again (back to back at 2,000 sandboxes)."""
    watch = gen.GenerationWatch()
    watch.verified = 9
    watch.own_commit(11)                   # 10 was someone else's: the gap stays
    watch.own_commit(12)
    assert watch.verified == 9
    watch.listed(10)                       # the listing (begun at 10) found our rules
    assert watch.unchanged(12)
    watch.own_commit(14)                   # 13 was someone else's
    assert not watch.unchanged(14) and watch.verified == 12


def test_remembered_generations_stay_bounded() -> None:
    watch = gen.GenerationWatch()
    watch.verified = 0
    for g in range(2, 3 * gen.GenerationWatch.KEEP, 2):   # every other one foreign
        watch.own_commit(g)
    assert watch.verified == 0 and len(watch._ours) <= gen.GenerationWatch.KEEP


class StubTable:
    def __init__(self) -> None:
        self.gen: int | None = 1
        self.rules = "fp-ours"
        self.listed = 0

    def generation(self) -> int | None:
        return self.gen

    def fingerprint(self) -> str | None:
        self.listed += 1
        return self.rules


def keeper() -> HostTableKeeper:
    k = HostTableKeeper(lambda: "", lambda: [], lambda: None)
    k.fingerprint = "fp-ours"
    return k


def test_an_unchanged_generation_is_not_listed_and_any_other_commit_is() -> None:
    k, table = keeper(), StubTable()
    assert k.current(table, 0.0) == "fp-ours" and table.listed == 1
    assert k.current(table, 1.0) == "fp-ours" and table.listed == 1     # nothing committed since
    with k.generations.lock:
        table.gen = 2
        k.generations.own_commit(2)                                           # ours
    assert k.current(table, 2.0) == "fp-ours" and table.listed == 1
    table.gen, table.rules = 3, "fp-edited"                              # someone else's
    assert k.current(table, 3.0) == "fp-edited" and table.listed == 2
    assert k.current(table, 4.0) == "fp-edited" and table.listed == 3   # still wrong: listed again


def test_the_table_is_listed_anyway_once_a_full_check_is_due() -> None:
    k, table = keeper(), StubTable()
    k.current(table, 0.0)
    k.current(table, FULL_CHECK_EVERY_S - 1)
    assert table.listed == 1
    k.current(table, FULL_CHECK_EVERY_S + 0.5)
    assert table.listed == 2


def test_a_driver_that_cannot_tell_its_generation_is_listed_every_time() -> None:
    k, table = keeper(), StubTable()
    table.gen = None
    for t in range(3):
        k.current(table, float(t))
    assert table.listed == 3


def test_the_table_is_fingerprinted_under_the_lock_our_commits_take(monkeypatch) -> None:
    """Our other threads' commits wait: one landing inside a dump would make it read again."""
    from netagent.firewall import driver, rules_probe
    watch = gen.GenerationWatch()
    held = []
    monkeypatch.setattr(rules_probe, "fingerprint", lambda family, table: held.append(watch.lock.locked()) or "fp")
    assert driver.HostTable("na", nft=object(), watch=watch).fingerprint() == "fp"  # type: ignore[arg-type]
    assert held == [True] and not watch.lock.locked()

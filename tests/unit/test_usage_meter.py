"""The usage meter on a real SQLite file with the kernel reading and the
committer as plain callables: what a restarted agent makes of what it
persisted."""
from __future__ import annotations

import asyncio

from netagent.core import ops
from netagent.core.rows import UsageReleased
from netagent.firewall import names
from netagent.state import StateStore, Tx
from netagent.usage.ledger import KEYS, Counts
from netagent.usage.meter import MeterIO, UsageMeter

IP = "10.12.0.1"


class Kernel:
    def __init__(self) -> None:
        self.epoch: int | None = 5
        self.count: int | None = 0     # every counter of IP, packets = count, bytes = 100 * count
        self.reads = 0
        self.keyed_reads: list[list[str]] = []

    async def read_of(self, ips: list[str]):  # type: ignore[no-untyped-def]
        self.keyed_reads.append(ips)
        epoch, sets = await self._reading()
        return epoch, {name: {ip: c for ip, c in keys.items() if ip in ips} for name, keys in sets.items()}

    async def read(self):  # type: ignore[no-untyped-def]
        self.reads += 1
        return await self._reading()

    async def _reading(self):  # type: ignore[no-untyped-def]
        if self.epoch is None:
            return None, {}
        sets = {name: ({IP: (self.count, 100 * self.count)} if self.count is not None else {})
                for name in names.USAGE_SETS.values()}
        return self.epoch, sets


def counts(n: int) -> Counts:
    return Counts.of({k: (n, 100 * n) for k in KEYS})


def meter(store: StateStore, kernel: Kernel, open_ips: dict[str, str], submitted: list) -> UsageMeter:
    async def submit(op):  # type: ignore[no-untyped-def]
        submitted.append(op)
    return UsageMeter(store, asyncio.Lock(), MeterIO(kernel.read, kernel.read_of, lambda: open_ips, submit))


async def test_a_restart_reads_on_and_a_flushed_table_keeps_what_was_persisted(tmp_path):
    store, kernel, submitted = StateStore(tmp_path), Kernel(), []
    first = meter(store, kernel, {"a": IP}, submitted)
    kernel.count = 7
    assert (await first.refresh())["a"] == counts(7)

    kernel.count = 9   # counted while no agent ran (kill -9: nothing persisted since)
    second = meter(store, kernel, {"a": IP}, submitted)
    second.load()
    assert (await second.refresh())["a"] == counts(9)

    kernel.epoch, kernel.count = 6, 2   # the table was replaced, then counted 2 more
    third = meter(store, kernel, {"a": IP}, submitted)
    third.load()
    assert (await third.refresh())["a"] == counts(11)
    assert submitted == []


async def test_a_release_persisted_before_a_crash_is_closed_at_start_up_without_cleaning(tmp_path):
    store, kernel, submitted = StateStore(tmp_path), Kernel(), []
    first = meter(store, kernel, {"a": IP}, submitted)
    kernel.count = 4
    await first.refresh()
    with store.transaction() as tx:   # the release commit's row; then the agent died
        tx.write(UsageReleased("a", IP, 3))

    kernel.epoch, kernel.count = None, None   # and the table was flushed meanwhile
    restarted = meter(store, kernel, {}, submitted)
    restarted.load()
    await restarted.close_pending()
    assert submitted == [ops.CloseUsage("a", IP, counts(4).as_dict(), None)]   # reconcile cleans the slot
    assert restarted.pending == {} and restarted.entries == {} and restarted.released_total == counts(4)


async def test_a_burst_of_releases_is_closed_with_one_reading_of_their_own_counters(tmp_path):
    store, kernel, submitted = StateStore(tmp_path), Kernel(), []
    m = meter(store, kernel, {}, submitted)
    kernel.count = 3
    for slot, sid in enumerate(("a", "b", "c")):
        m.release(sid, IP, slot)
    await m.close_pending()
    assert kernel.keyed_reads == [[IP]] and kernel.reads == 0   # not every sandbox's elements
    assert submitted == [ops.CloseUsage(sid, IP, counts(3).as_dict(), slot) for slot, sid in enumerate("abc")]
    assert m.pending == {} and m.entries == {}


async def test_the_last_reading_answers_without_reading_the_kernel_and_only_for_open_sandboxes(tmp_path):
    store, kernel, submitted = StateStore(tmp_path), Kernel(), []
    open_ips = {"a": IP}
    m = meter(store, kernel, open_ips, submitted)
    assert m.last_reading() == ({}, 0.0)            # nothing read yet: nobody, never
    kernel.count = 3
    await m.refresh()
    kernel.count = 8                                # counted since; not read
    totals, read_at = m.last_reading()
    assert totals == {"a": counts(3)} and read_at > 0
    open_ips["b"] = "10.12.0.3"                     # allocated after the reading
    del open_ips["a"]                               # released (closed later)
    assert m.last_reading() == ({}, read_at)


class ManyKernel:
    """Every sandbox's counters at `count`; one reading for all of them."""
    def __init__(self, ips: list[str]) -> None:
        self.ips, self.count, self.epoch = ips, 1, 5

    async def read(self):  # type: ignore[no-untyped-def]
        counts = {ip: (self.count, 100 * self.count) for ip in self.ips}
        return self.epoch, {name: dict(counts) for name in names.USAGE_SETS.values()}

    async def read_of(self, ips: list[str]):  # type: ignore[no-untyped-def]
        raise AssertionError("not used")


async def test_a_reading_lets_the_event_loop_run_between_chunks_and_skips_only_what_did_not_move(tmp_path, monkeypatch):
    """At thousands of sandboxes a reading's fold is tens of ms of Python on the
    event loop: it must yield (allocates wait behind it otherwise), and an
    unchanged sandbox is neither folded again nor written."""
    from netagent.usage import meter as meter_module
    monkeypatch.setattr(meter_module, "FOLD_CHUNK", 4)
    ips = {f"s{i}": f"10.12.0.{2 * i + 1}" for i in range(20)}
    kernel, store = ManyKernel(list(ips.values())), StateStore(tmp_path)
    m = UsageMeter(store, asyncio.Lock(), MeterIO(kernel.read, kernel.read_of, lambda: ips, None))  # type: ignore[arg-type]
    saved: list[int] = []
    real_save = Tx.save_usage
    monkeypatch.setattr(Tx, "save_usage", lambda tx, rows: (saved.append(len(rows)), real_save(tx, rows))[1])

    turns = 0
    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = turns
    totals = await m.refresh()
    during = turns - before
    assert totals["s3"] == counts(1)
    assert during >= 20 // 4 - 1, during          # the loop ran between chunks

    await m.refresh()                              # nothing moved
    kernel.count = 2
    ips_changed = await m.refresh()
    task.cancel()
    assert saved == [20, 20], saved                # the unchanged reading wrote nothing
    assert ips_changed["s7"] == counts(2)
    kernel.epoch = 6                               # a replaced table counting the same: a restart, not "unchanged"
    assert (await m.refresh())["s7"] == counts(4)


async def test_readings_given_up_are_counted_and_exported_with_the_last_reading_time(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from netagent.errors import Unavailable
    from netagent.usage.collector import UsageCollector

    kernel, failures = Kernel(), [Unavailable("dump cut by commits"), Unavailable("dump cut by commits")]
    read_ok = kernel.read

    async def read():  # type: ignore[no-untyped-def]
        if failures:
            raise failures.pop()
        return await read_ok()
    m = UsageMeter(StateStore(tmp_path), asyncio.Lock(), MeterIO(read, kernel.read_of, lambda: {"a": IP}, None))  # type: ignore[arg-type]
    task = asyncio.create_task(m.run(lambda: 0.001))
    try:
        async with asyncio.timeout(30):
            while not m.read_at:
                await asyncio.sleep(0.001)
    finally:
        task.cancel()
    assert m.failed_readings == 2

    collector, registry = UsageCollector(per_sandbox=False), CollectorRegistry()
    registry.register(collector)
    collector.update(m.open_totals(), m.released_total, m.read_at, m.failed_readings)
    samples = {s.name: s.value for f in text_string_to_metric_families(generate_latest(registry).decode())
               for s in f.samples}
    assert samples["netagent_usage_readings_failed_total"] == 2
    assert samples["netagent_usage_read_timestamp_seconds"] == m.read_at > 0


async def test_a_reading_equal_to_the_last_one_is_not_folded_again(tmp_path, monkeypatch):
    """An idle host reads the same counts every interval: the fold over every
    entry (~6 ms of the loop at 2,000) runs only when the reading, the
    sandboxes or their entries changed."""
    kernel, submitted = Kernel(), []
    ips = {"sbx-1": IP}
    m = meter(StateStore(tmp_path), kernel, ips, submitted)
    folds: list[int] = []
    real = UsageMeter._observe
    monkeypatch.setattr(UsageMeter, "_observe",
                        lambda self, sids, *a: (folds.append(len(sids)), real(self, sids, *a))[1])
    kernel.count = 3
    await m.refresh()
    await m.refresh()
    assert folds == [1]
    ips["sbx-2"] = "10.12.0.3"                     # a new sandbox: folded
    await m.refresh()
    kernel.count = 4                               # counts moved: folded
    assert (await m.refresh())["sbx-1"] == counts(4)
    assert folds == [1, 2, 2]
    m.release("sbx-2", "10.12.0.3", 1)             # a close reads on its own: the next reading folds
    del ips["sbx-2"]
    await m.close_pending()
    await m.refresh()
    assert folds == [1, 2, 2, 1, 1]
    kernel.epoch = 6                               # a replaced table counting the same: folded (a restart)
    assert (await m.refresh())["sbx-1"] == counts(8) and len(folds) == 6


async def test_a_sandbox_left_out_of_a_cut_dump_keeps_its_count_and_is_not_counted_twice(tmp_path):
    """At 10,000 sandboxes commits cut the reading's dumps; a sandbox a cut dump
    left out was taken as gone: its count went into the base, and the next
    whole reading added it again."""
    from netagent.firewall.set_dump import CutDump

    class CuttingKernel(Kernel):
        cut = False

        async def _reading(self):  # type: ignore[no-untyped-def]
            epoch, sets = await super()._reading()
            return epoch, ({name: CutDump() for name in sets} if self.cut else sets)
    kernel, submitted = CuttingKernel(), []
    store = StateStore(tmp_path)
    m = meter(store, kernel, {"sbx-1": IP}, submitted)
    kernel.count = 5
    assert (await m.refresh())["sbx-1"] == counts(5)
    kernel.cut = True
    assert (await m.refresh())["sbx-1"] == counts(5)     # not read: as it was
    kernel.cut, kernel.count = False, 6
    assert (await m.refresh())["sbx-1"] == counts(6)     # not 5 + 6
    assert m.entries["sbx-1"].base == Counts()


async def test_a_cut_reading_counts_the_sandboxes_it_read_and_keeps_the_others(tmp_path):
    """The two rules of a cut dump, through the meter and its SQLite file: a
    sandbox the cut dump read is counted (and persisted) as in a whole reading;
    one it left out is taken as not read, not as gone (gone would fold its
    count into the persisted base, and the next whole reading after a restart
    would count it twice), and the reading is not given up."""
    from netagent.firewall.set_dump import CutDump
    other = "10.12.0.2"

    class CuttingKernel(Kernel):
        cut = False

        async def _reading(self):  # type: ignore[no-untyped-def]
            epoch, sets = await super()._reading()
            for keys in sets.values():
                keys[other] = (3, 300)
            if self.cut:   # the cut dumps read IP's elements and left out the other's
                sets = {name: CutDump({IP: keys[IP]}) for name, keys in sets.items()}
            return epoch, sets
    kernel, submitted = CuttingKernel(), []
    store = StateStore(tmp_path)
    m = meter(store, kernel, {"a": IP, "b": other}, submitted)
    kernel.count = 5
    assert await m.refresh() == {"a": counts(5), "b": counts(3)}
    kernel.cut, kernel.count = True, 8
    assert await m.refresh() == {"a": counts(8), "b": counts(3)}
    assert (m.readings, m.cut_readings, m.failed_readings) == (2, 1, 0)   # the bench reports these
    restarted = meter(store, kernel, {"a": IP, "b": other}, submitted)
    restarted.load()
    assert {sid: e.total for sid, e in restarted.entries.items()} == {"a": counts(8), "b": counts(3)}
    kernel.cut = False
    assert await restarted.refresh() == {"a": counts(8), "b": counts(3)}


async def test_a_reading_writes_its_rows_off_the_event_loop_and_returns_once_they_are_committed(tmp_path, monkeypatch):
    """The changed rows' SQLite transaction held the loop ms at a time every
    reading at 2,000 moving sandboxes: it runs on the meter's writer thread,
    while the loop goes on (here the loop must run for the write to finish),
    and a reading returns only once its rows are committed (a close after it
    must not be undone by a late write)."""
    import threading
    store, kernel, submitted = StateStore(tmp_path), Kernel(), []
    m = meter(store, kernel, {"a": IP}, submitted)
    loop_ran, writers = threading.Event(), []
    real_save = Tx.save_usage

    def save(tx, rows):  # type: ignore[no-untyped-def]
        writers.append(threading.current_thread().name)
        assert loop_ran.wait(5), "the event loop did not run while the rows were written"
        real_save(tx, rows)
    monkeypatch.setattr(Tx, "save_usage", save)

    async def ticker() -> None:
        while not writers:
            await asyncio.sleep(0.001)
        loop_ran.set()
    task = asyncio.create_task(ticker())
    kernel.count = 3
    await m.refresh()
    await task
    assert writers and writers[0].startswith("netagent-usage-db")
    assert {sid: data for sid, _, _, _, data in StateStore(tmp_path).load_usage()}.keys() == {"a"}
    m.close()

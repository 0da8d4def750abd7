"""HostTable with its element transactions (apply, admit) sent as one raw
nf_tables netlink batch (firewall/element_batch.py) on the thread's kept
netlink socket, without libnftables. libnftables keeps the ruleset (reload,
refill), listings and verification, and any transaction with a change the
batch does not encode (then the whole transaction goes through it: all or
nothing stays true).

The set shapes the encoder needs come from one GETSET dump, read again after
our own reload or table delete and after any refused batch (someone may have
changed the table). The committer's batches go from the event loop when they
can (`loop_batcher`, firewall/loop_batch.py), with these shapes.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..errors import Unavailable
from . import element_batch as eb
from . import elements as el
from . import nlsock, set_schema
from .driver import HostTable
from .generation import GenerationWatch
from .loop_batch import LoopBatcher
from .nft import Nft


class NetlinkHostTable(HostTable):
    """FirewallDriver for `inet <table>`: element changes by raw netlink batch."""

    def __init__(self, table: str, nft: Nft | None = None, watch: GenerationWatch | None = None):
        super().__init__(table, nft, watch)
        self.shapes: dict[str, set_schema.SetShape] | None = None
        self._raw_duration_s: float | None = None
        self.raw_batches = 0      # transactions sent as a raw batch
        self.fallbacks = 0        # ... and through libnftables (a change not encoded)

    @property
    def last_duration_s(self) -> float:
        return self._raw_duration_s if self._raw_duration_s is not None else self.nft.last_duration_s

    def apply(self, ops: Sequence[el.Op]) -> None:
        if ops:
            self._send(eb.changes(ops), lambda: super(NetlinkHostTable, self).apply(ops))

    def admit(self, set_name: str, keys: Sequence[tuple[el.Key, int]]) -> None:
        if keys:
            self._send(eb.timed_changes(set_name, keys), lambda: super(NetlinkHostTable, self).admit(set_name, keys))

    def _send(self, todo: list[eb.Change], fallback) -> None:  # type: ignore[no-untyped-def]
        try:
            shapes = self.shapes if self.shapes is not None else self._read_shapes()
            batch = eb.encode("inet", self.table, shapes, todo, 1)
            if len(batch.data) > eb.MAX_BATCH_BYTES:
                raise eb.Unencodable(f"a batch of {len(batch.data)} bytes")
        except eb.Unencodable:
            self.fallbacks += 1
            self._raw_duration_s = None
            fallback()
            return
        self._commit(lambda: self._batch(batch))

    def _batch(self, batch: eb.Batch) -> None:
        started = time.perf_counter()
        answers: list[Callable[[bytes, int], bool | None]] = []

        def request(seq: int) -> bytes:
            numbered = eb.renumber(batch, seq)
            answers.append(eb.reader(numbered))
            return numbered.data
        try:
            nlsock.ask(request, lambda data, seq: answers[-1](data, seq), batch.last_seq - batch.first_seq + 2)
        except eb.BatchError as exc:
            self.shapes = None   # the table may not be what we read
            raise Unavailable(str(exc)) from exc
        except OSError as exc:
            self.shapes = None
            raise Unavailable(f"sending an nftables element batch: {exc}") from exc
        finally:
            self._raw_duration_s = time.perf_counter() - started
        self.raw_batches += 1

    def _read_shapes(self) -> dict[str, set_schema.SetShape]:
        try:
            shapes = set_schema.read_shapes("inet", self.table)
        except OSError as exc:
            raise eb.Unencodable(f"reading the sets of inet {self.table}: {exc}") from exc
        self.shapes = shapes or None   # no table yet: read again next time
        return shapes

    def loop_batcher(self) -> LoopBatcher:
        """A sender of this table's element batches for the event loop (call on
        this driver's thread: its socket is made in this netns)."""
        return LoopBatcher(self)

    def reload(self, rules_text: str, fixed: Sequence[el.Element], dynamic: Sequence[el.Element]) -> None:
        self.shapes = None
        super().reload(rules_text, fixed, dynamic)

    def delete_table(self) -> bool:
        self.shapes = None
        return super().delete_table()

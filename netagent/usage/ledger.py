"""The usage ledger, pure: what a sandbox has used = base + last kernel reading.

The kernel counts in set elements (rules/netagent.nft, usage_*). Those counts
survive an agent restart untouched, but not a replaced table (`nft flush
ruleset`, a drift reload): the new elements count from 0 again. The ledger
notices such a restart of the counters and folds the last reading into the
base, so the total never goes back. A restart is seen when the table is
another one (its handle, the epoch), when the element is gone, or when any
counter reads lower than last time. An element missing from a dump that
commits cut (`set_dump.CutDump`) is not gone: that sandbox is not read this
time (`UNREAD`), or its counts would be folded into the base twice.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..firewall import names
from ..firewall.set_dump import CutDump

# "egress_sent", "egress_received", ...: one per usage counter set.
KEYS: tuple[str, ...] = tuple(f"{path}_{direction}" for path, direction in names.USAGE_SETS)
SET_OF_KEY = {f"{path}_{direction}": name for (path, direction), name in names.USAGE_SETS.items()}


@dataclass(frozen=True)
class Counts:
    """(packets, bytes) per key of KEYS."""
    values: tuple[tuple[int, int], ...] = tuple((0, 0) for _ in KEYS)

    @classmethod
    def of(cls, by_key: Mapping[str, tuple[int, int]]) -> Counts:
        return cls(tuple(by_key.get(k, (0, 0)) for k in KEYS))

    def __add__(self, other: Counts) -> Counts:
        return Counts(tuple((a[0] + b[0], a[1] + b[1]) for a, b in zip(self.values, other.values, strict=True)))

    def below(self, other: Counts) -> bool:
        """Any counter lower than in `other` (the kernel started again)."""
        return any(a[0] < b[0] or a[1] < b[1] for a, b in zip(self.values, other.values, strict=True))

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {k: {"packets": p, "bytes": b} for k, (p, b) in zip(KEYS, self.values, strict=True)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counts:
        return cls.of({k: (int(v["packets"]), int(v["bytes"])) for k, v in data.items() if k in KEYS})


_ZERO = Counts().values


@dataclass(frozen=True)
class Entry:
    ip: str                  # the sandbox IP the kernel elements are keyed by
    base: Counts = Counts()  # counted by earlier kernel elements
    last: Counts = Counts()  # the last reading of the current ones
    epoch: int = 0           # handle of the table of the last reading (0: none yet)

    @property
    def total(self) -> Counts:
        # most sandboxes never saw a counter restart: no sum to build
        return self.last if self.base.values == _ZERO else self.base + self.last

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base.as_dict(), "last": self.last.as_dict(), "epoch": self.epoch}

    @classmethod
    def from_json(cls, ip: str, data: Mapping[str, Any]) -> Entry:
        return cls(ip, Counts.from_dict(data.get("base", {})), Counts.from_dict(data.get("last", {})),
                   int(data.get("epoch", 0)))


def observe(entry: Entry, kernel: Counts | None, epoch: int | None) -> Entry:
    """The entry after one reading: `kernel` is None when the element is gone,
    `epoch` None when the table is."""
    restarted = (kernel is None or epoch is None or (entry.epoch != 0 and epoch != entry.epoch)
                 or kernel.below(entry.last))
    now = kernel if kernel is not None else Counts()
    if restarted:
        return replace(entry, base=entry.total, last=now, epoch=epoch or 0)
    return replace(entry, last=now, epoch=epoch or 0)


UNREAD = object()   # reading_of: a cut dump left an element out (not gone: not read this time)


def reading_of(ip: str, by_set: Mapping[str, Mapping[str, tuple[int, int]]]) -> Counts | None | object:
    """One sandbox's counts out of a kernel reading (set name -> ip -> counter);
    None if any of its elements is missing from a whole dump (gone), else
    UNREAD if one is missing from a cut dump."""
    out: dict[str, tuple[int, int]] = {}
    unread = False
    for key, set_name in SET_OF_KEY.items():
        elements = by_set.get(set_name, {})
        counter = elements.get(ip)
        if counter is None:
            if not isinstance(elements, CutDump):
                return None
            unread = True
        out[key] = counter
    return UNREAD if unread else Counts.of(out)

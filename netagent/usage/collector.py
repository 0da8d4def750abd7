"""Prometheus view of the usage ledger: totals by path and direction, and per
sandbox only behind `metrics.per_sandbox` (one series per sandbox and key
would swamp a scrape at thousands of sandboxes).

A scrape reads the snapshot `update` last stored; it never touches the kernel.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from .ledger import KEYS, Counts


def _split(key: str) -> list[str]:
    path, direction = key.split("_", 1)
    return [path, direction]


class UsageCollector(Collector):
    def __init__(self, per_sandbox: bool):
        self.per_sandbox = per_sandbox
        self._open: dict[str, Counts] = {}
        self._released = Counts()

    def update(self, open_totals: Mapping[str, Counts], released: Counts) -> None:
        """Totals of allocated sandboxes, and the sum of released ones' finals
        (kept so the aggregate never goes down on a release)."""
        self._open, self._released = dict(open_totals), released

    def collect(self) -> Iterator[Metric]:
        total = self._released
        for counts in self._open.values():
            total = total + counts
        doc = "IP {} counted per sandbox in the kernel (path: egress, ingress, host; direction: sent, received)."
        for field, unit in ((1, "bytes"), (0, "packets")):
            agg = CounterMetricFamily(f"netagent_usage_{unit}", doc.format(unit), labels=["path", "direction"])
            for key, value in zip(KEYS, total.values, strict=True):
                agg.add_metric(_split(key), value[field])
            yield agg
        if not self.per_sandbox:
            return
        per = CounterMetricFamily("netagent_sandbox_usage_bytes", "IP bytes per allocated sandbox.",
                                  labels=["sandbox_id", "path", "direction"])
        for sid, counts in sorted(self._open.items()):
            for key, value in zip(KEYS, counts.values, strict=True):
                per.add_metric([sid, *_split(key)], value[1])
        yield per

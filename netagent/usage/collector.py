"""Prometheus view of the usage ledger: totals by path and direction, and per
sandbox only behind `metrics.per_sandbox` (one series per sandbox and key
would swamp a scrape at thousands of sandboxes).

A scrape reads the snapshot `update` last stored; it never touches the kernel.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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
        self._read_at = 0.0
        self._failed_readings = 0

    def update(self, open_totals: Mapping[str, Counts], released: Counts, read_at: float = 0.0,
               failed_readings: int = 0) -> None:
        """Totals of allocated sandboxes, and the sum of released ones' finals
        (kept so the aggregate never goes down on a release); the time of the
        last reading and the count of readings given up."""
        self._open, self._released = dict(open_totals), released
        self._read_at, self._failed_readings = read_at, failed_readings

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
        yield GaugeMetricFamily("netagent_usage_read_timestamp_seconds",
                                "Unix time of the last usage reading of the kernel (0 = none yet).",
                                value=self._read_at)
        yield CounterMetricFamily("netagent_usage_readings_failed", "Periodic usage readings given up "
                                  "(read again at the next interval; counts stay right, only older).",
                                  value=self._failed_readings)
        if not self.per_sandbox:
            return
        per = CounterMetricFamily("netagent_sandbox_usage_bytes", "IP bytes per allocated sandbox.",
                                  labels=["sandbox_id", "path", "direction"])
        for sid, counts in sorted(self._open.items()):
            for key, value in zip(KEYS, counts.values, strict=True):
                per.add_metric([sid, *_split(key)], value[1])
        yield per

"""Prometheus figures of the flow record (docs/metrics.md), read at scrape time."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class FlowMetrics(Collector):
    def __init__(self, recorder: Any):
        self.recorder = recorder   # flows.recorder.FlowRecorder

    def collect(self) -> Iterator[Any]:
        r, store = self.recorder, self.recorder.store
        yield CounterMetricFamily("netagent_flow_records", "Flow records stored (flows.db).", value=store.written)
        yield CounterMetricFamily("netagent_flow_event_overflows",
                                  "Times the kernel dropped conntrack destroy events because the agent's socket "
                                  "buffer was full (those flows have no record).", value=r.lost)
        yield CounterMetricFamily("netagent_flow_store_failures", "Batches of flow records that could not be "
                                  "written (disk full, I/O error).", value=store.failures)
        yield CounterMetricFamily("netagent_flow_counter_readings", "Periodic readings of the live flows' counters "
                                  "([flows] counters_interval_s).", value=r.readings)
        yield CounterMetricFamily("netagent_flow_counter_reading_cpu_seconds", "The flow reader thread's CPU time "
                                  "in those readings (dump and parse; the SQLite refresh is on the writer thread).",
                                  value=r.reading_cpu_s)
        yield GaugeMetricFamily("netagent_flow_counter_reading_entries", "Conntrack entries the last reading parsed.",
                                value=r.reading_entries)
        yield GaugeMetricFamily("netagent_flow_records_pending", "Flow records and live-set changes queued for the "
                                "writer thread.", value=store.pending)

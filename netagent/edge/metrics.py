"""The edge control plane's Prometheus figures (`netagent edge --metrics-address`):
whether HAProxy's maps follow the registry, and since when.

`netagent_edge_in_sync_timestamp_seconds` moves on every turn of the control
loop that read the registry and applied what changed (at least every poll
interval, also when nothing changed), so `time() - it` is how far behind the
registry HAProxy's maps may be: the edge's sync lag.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self._in_sync = Gauge("netagent_edge_in_sync", "1 while HAProxy's maps follow the registry "
                              "(0 from a lost registry or HAProxy until the next full sync).", registry=r)
        self._in_sync_at = Gauge("netagent_edge_in_sync_timestamp_seconds",
                                 "Unix time HAProxy's maps last matched the registry (0 = never).", registry=r)
        self._records = Gauge("netagent_edge_records", "Sandboxes in HAProxy's maps.", registry=r)
        self._full_syncs = Counter("netagent_edge_full_syncs", "Full loads of the registry into HAProxy.",
                                   registry=r)
        self._sync_losses = Counter("netagent_edge_sync_losses", "Times the registry or HAProxy was lost "
                                    "(a lost registry is read again every 0.5 s; a lost HAProxy gets the "
                                    "maps again as soon as a process answers).", registry=r)
        self._map_ops = Counter("netagent_edge_map_ops", "Map entries added, set or deleted in HAProxy.",
                                registry=r)

    def full_sync(self, records: int) -> None:
        self._full_syncs.inc()
        self._records.set(records)
        self.in_sync()

    def applied(self, ops: int, records: int) -> None:
        if ops:
            self._map_ops.inc(ops)
        self._records.set(records)
        self.in_sync()

    def in_sync(self) -> None:
        self._in_sync.set(1)
        self._in_sync_at.set(time.time())

    def lost(self) -> None:
        self._sync_losses.inc()
        self._in_sync.set(0)

"""The connection-log bench's pure parts: lost records and figures."""
from __future__ import annotations

from tests.bench.flow_log_bench import figures, lost


def test_lost_counts_connections_without_a_record_once_per_use():
    made = [["10.12.0.1", 40000], ["10.12.0.1", 40001], ["10.12.0.3", 40000], ["10.12.0.3", 40000]]
    assert lost(made, [("10.12.0.1", 40000), ("10.12.0.3", 40000)]) == 2       # 40001 and the port's second use
    assert lost(made, [("10.12.0.1", 40000), ("10.12.0.1", 40001), ("10.12.0.3", 40000),
                       ("10.12.0.3", 40000), ("10.12.0.1", 40000)]) == 0      # a retried SYN: an extra record


def test_figures():
    client = {"made": 3, "failed": 1, "missed": 0, "start": 10.0, "end": 12.0,
              "flows": [["10.12.0.1", 1], ["10.12.0.1", 2], ["10.12.0.1", 3]]}
    out = figures(client, [("10.12.0.1", 1), ("10.12.0.1", 2)], (0, 100), {"netagent-flowrd": 0.1, "python": 0.2},
                  {"db": 2000, "jsonl": 800})
    assert out["records_lost"] == 1 and not out["meets_target"]["zero_records_lost"]
    assert out["rate_achieved_per_s"] == 1.5 and out["flow_threads_cpu_cores"] == {"netagent-flowrd": 0.1}
    assert (out["db_bytes_per_record"], out["jsonl_bytes_per_record"]) == (1000.0, 400.0)

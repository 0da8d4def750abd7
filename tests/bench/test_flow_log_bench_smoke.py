"""The connection-log bench's pure parts: lost records and figures."""
from __future__ import annotations

from tests.bench.flow_log_bench import figures, lost, readings


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


def test_readings_per_reading_and_at_the_default_interval():
    out = readings({"netagent_flow_counter_readings_total{}": 4.0,
                    "netagent_flow_counter_reading_cpu_seconds_total{}": 0.24,
                    "netagent_flow_counter_reading_entries{}": 3000.0}, 5.0)
    assert (out["readings"], out["entries_last"], out["cpu_ms_per_reading"]) == (4, 3000, 60.0)
    assert (out["cpu_cores_at_this_interval"], out["cpu_cores_at_60s"]) == (0.012, 0.001)
    assert readings({}, 5.0)["cpu_ms_per_reading"] == 0.0

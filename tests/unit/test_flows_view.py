"""`netagent flows`: its time arguments and table rows."""
from __future__ import annotations

import pytest

from netagent.operator.flows_view import parse_time, row

NOW = 1_800_000_000.0


def test_times_are_unix_seconds_iso_or_ago():
    assert parse_time("1700000000", NOW) == 1_700_000_000.0
    assert parse_time("2026-12-07T22:00:00Z", NOW) == 1_796_680_800.0
    assert parse_time("2026-12-07T23:00:00+01:00", NOW) == 1_796_680_800.0
    assert parse_time("90s", NOW) == NOW - 90
    assert parse_time("10m", NOW) == NOW - 600
    assert parse_time("2h", NOW) == NOW - 7200
    assert parse_time("1.5d", NOW) == NOW - 129600


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "2026-12-07T22:00:00", "-5m", ""])
def test_anything_else_is_refused_clearly(text):
    with pytest.raises(ValueError, match="not a time|time zone"):
        parse_time(text, NOW)


def test_row_of_a_record():
    cells = row({"direction": "egress", "protocol": "tcp", "destination": "203.0.113.10", "destinationPort": 443,
                 "domain": "api.test", "bytesSent": "517", "packetsSent": "6", "bytesReceived": "4096",
                 "packetsReceived": "5", "startUnixMs": "1000", "endUnixMs": "3500", "endReason": "unknown",
                 "whileDown": True})
    assert (cells["dir"], cells["destination"], cells["domain"], cells["sent"], cells["received"]) == (
        "out", "203.0.113.10:443", "api.test", "517 B/6p", "4096 B/5p")
    assert (cells["duration"], cells["ended"]) == ("2.5s", "unknown (agent down)")

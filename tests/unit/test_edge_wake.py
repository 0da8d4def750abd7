"""Pure parts of wake on request: the hook's body and signature, its settings, the
waker's line protocol with wake.lua, the lifecycle in the maps."""
from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from netagent.edge import dialfail
from netagent.edge.maps import entries_from_json, record_entries
from netagent.edge.wakehook import ResumeHook, hook_body, sign
from netagent.edge.waker import WakeFailed, fail_line, parse_wake
from netagent.registry import PortRecord, SandboxRecord


def test_the_hook_body_is_signed_with_hmac_sha256() -> None:
    body = hook_body("abc", 3000, 1700000000.1234)
    assert json.loads(body) == {"sandboxId": "abc", "port": 3000, "requestedAt": 1700000000.123}
    assert sign(b"k" * 32, body) == "sha256=" + hmac.new(b"k" * 32, body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("url,key", [("ftp://x/", b"k" * 32), ("http:///path", b"k" * 32), ("http://h/", b"short")])
def test_a_hook_needs_an_http_url_and_a_long_key(url: str, key: bytes) -> None:
    with pytest.raises(ValueError):
        ResumeHook(url, key)


def test_the_waker_reads_one_wake_line() -> None:
    assert parse_wake(b"WAKE abc-1 3000\n") == ("abc-1", 3000)
    for bad in (b"WAKE abc 3000", b"WAKE abc 0\n", b"WAKE abc 65536\n", b"WAKE ABC 80\n", b"WAKE -a 80\n",
                b"WAKE a 80 x\n", b"GET / HTTP/1.1\r\n", b"WAKE a\r\n80\n"):
        assert parse_wake(bad) is None, bad


def test_a_refusal_carries_only_characters_safe_in_json_and_html() -> None:
    line = fail_line(WakeFailed(503, 'hook "x" answered <b>500</b>\\ & \r\nmore'))
    assert line.startswith(b"FAIL 503 ") and line.endswith(b"\n") and line.count(b"\n") == 1
    assert not set(line[9:-1].decode()) & set('"<>&\\\r%')


def test_paused_records_in_the_maps() -> None:
    port = PortRecord(3000, "tcp", 30001, False, 0.0, 0.0)
    live = SandboxRecord("abc", "n1", "10.0.0.7", 1, 0.0, (port,))
    assert record_entries(live)["abc"] == "1" and "paused" not in live.to_json()
    for paused, wake, want in ((True, False, "paused"), (True, True, "wake"), (False, True, "1")):
        rec = SandboxRecord("abc", "n1", "10.0.0.7", 1, 0.0, (port,), paused=paused, wake=wake)
        assert record_entries(rec)["abc"] == want == entries_from_json("abc", rec.to_json())["abc"]
        assert SandboxRecord.from_json(rec.to_json()) == rec


def test_the_failed_connect_answer_is_built_from_map_pieces() -> None:
    """HAProxy composes piece1 SID piece2 PORT piece3 ' ' PORT ' ' piece4 at failure time
    (dialfail.rules); a map value keeps no leading or trailing blank."""
    entries = dict(line.split(" ", 1) for line in dialfail.map_text().splitlines())
    assert len(entries) == 16 and all(v == v.strip() for v in entries.values())

    def body(closed: bool, json_: bool) -> str:
        p = [entries[f"{'closed' if closed else ''}k{'1' if json_ else ''}p{n}"] for n in range(1, 5)]
        return f"{p[0]}abc{p[1]}3000{p[2]} 3000 {p[3]}"
    assert json.loads(body(True, True)) == {"sandboxId": "abc", "port": 3000, "message": "port 3000 is not open"}
    assert json.loads(body(False, True))["message"] == "port 3000 did not accept the connection"
    assert "port 3000 is not open" in body(True, False) and "502 Bad Gateway" in body(True, False)
    assert "504 Gateway Timeout" in body(False, False)

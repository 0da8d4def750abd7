"""Request records survive an agent kill -9 (issue #23 part 4), over the real
daemon and its real HAProxy: the interceptor keeps serving while no agent
runs, and the requests it served then are recorded once each (requests.jsonl
and http_request events) when the agent is back; the ones recorded before the
kill are not recorded again."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3

import pytest

from tests.datapath.test_interception_agent import API_IP, RULES, SECRET, guest_curl, resolve
from tests.service.daemon import Daemon, write_config
from tests.testbed import sh, tls
from tests.testbed.bed import LightGuest, wait_until


@pytest.fixture
def upstream_ca(bed, tmp_path):
    """api.test's HTTPS server in the internet netns (tests/testbed/echo_upstream.py); its CA."""
    d = tmp_path / "upstream"
    d.mkdir()
    ca = tls.make_ca(d, "upstream-ca")
    crt, key = tls.issue(d, "api", "DNS:api.test")
    sh.ip("addr", "add", f"{API_IP}/32", "dev", "lo", ns=bed.inet)
    bed.start_module(bed.inet, "tests.testbed.echo_upstream", API_IP, str(crt), str(key), str(d / "seen.jsonl"))
    return ca


def paths(log) -> list[str]:  # type: ignore[no-untyped-def]
    if not log.exists():
        return []
    return [json.loads(line)["path"] for line in log.read_text().splitlines() if line.strip()]


def event_paths(db) -> list[str]:  # type: ignore[no-untyped-def]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT data FROM events WHERE type = 'http_request'").fetchall()
    finally:
        conn.close()
    return [json.loads(data)["request"]["path"] for (data,) in rows]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_requests_served_while_the_agent_is_killed_are_recorded_once_at_the_next_start(bed, upstream_ca, tmp_path):
    ca = upstream_ca
    run_dir = tmp_path / "ic-run"
    config = write_config(bed, tmp_path, intercept={"ca_bundle": str(ca), "run_dir": str(run_dir)})
    log = tmp_path / "state" / "requests.jsonl"
    daemon = Daemon(config).start()
    guest = None
    left: list[int] = []
    try:
        with daemon.client() as c:
            c.set_secret("rq-k", "API_KEY", SECRET)
            guest = LightGuest.attach(bed, c.allocate("rq-k").network, "q")
            c.set_request_rules("rq-k", RULES)
            guest_ca = tmp_path / "guest-ca.pem"
            guest_ca.write_text(c.intercept_ca())
        assert asyncio.run(resolve(guest, "api.test")) == API_IP    # steered for the answer's 30 s
        assert asyncio.run(guest_curl(guest, guest_ca, "https://api.test/before", API_IP))[0] == 200
        assert wait_until(lambda: paths(log) == ["/before"], timeout=30), paths(log)

        left.append(int((run_dir / "haproxy.pid").read_text()))
        daemon.stop(signal.SIGKILL)
        assert alive(left[0]), "the interceptor did not outlive the agent"
        down = ["/down-1", "/down-2", "/admin"]          # /admin: denied by the first rule (403)
        codes = [asyncio.run(guest_curl(guest, guest_ca, f"https://api.test{p}", API_IP))[0] for p in down]
        assert codes == [200, 200, 403]

        daemon = Daemon(config).start()
        assert wait_until(lambda: sorted(paths(log)) == sorted(["/before", *down]), timeout=30), paths(log)
        with daemon.client() as c:
            assert asyncio.run(guest_curl(guest, guest_ca, "https://api.test/after", API_IP))[0] == 200
        assert wait_until(lambda: len(paths(log)) == 5, timeout=30), paths(log)
        daemon.stop()
        assert sorted(paths(log)) == sorted(["/before", *down, "/after"])          # once each
        assert sorted(event_paths(tmp_path / "state" / "state.db")) == sorted(["/before", *down, "/after"])
        # how far the events had read is committed with them (a restart resumes there)
        conn = sqlite3.connect(f"file:{tmp_path / 'state' / 'state.db'}?mode=ro", uri=True)
        (read_to,) = conn.execute("SELECT value FROM meta WHERE key = 'intercept_requests_read_to'").fetchone()
        conn.close()
        assert json.loads(read_to) and all(v > 0 for v in json.loads(read_to).values()), read_to
    finally:
        if guest is not None:
            guest.stop()
        daemon.stop()
        for pid in left:     # the first interceptor, should the takeover not have ended it
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

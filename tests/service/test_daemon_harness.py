"""The daemon harness itself: start() fails, never hangs, on a daemon that is
silent or exits before "netagent ready" (no root, no agent: stand-in commands)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.service.daemon import Daemon
from tests.testbed import sh


@pytest.fixture
def stand_ins():
    made: list[Daemon] = []
    yield made
    for daemon in made:
        if daemon.proc and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()


class StandIn(Daemon):
    def __init__(self, script: str):
        super().__init__(Path("/nonexistent.toml"))
        self.script = script

    def command(self) -> list[str]:
        return [sh.PYTHON, "-u", "-c", self.script]


def test_a_silent_daemon_fails_start_at_the_deadline_and_is_killed(stand_ins):
    daemon = StandIn("import time; print('starting'); time.sleep(600)")
    stand_ins.append(daemon)
    started = time.monotonic()
    with pytest.raises(AssertionError, match="not ready within 1.5 s") as exc:
        daemon.start(timeout=1.5)
    assert 1.5 <= time.monotonic() - started < 5
    assert "starting" in str(exc.value)
    assert daemon.proc.poll() is not None  # killed, not left behind


def test_a_daemon_printing_lines_but_never_ready_fails_at_the_deadline(stand_ins):
    daemon = StandIn("import time\nwhile True: print('busy', flush=True); time.sleep(0.1)")
    stand_ins.append(daemon)
    started = time.monotonic()
    with pytest.raises(AssertionError, match="not ready within 1.5 s"):
        daemon.start(timeout=1.5)
    assert time.monotonic() - started < 5 and daemon.proc.poll() is not None


def test_a_daemon_exiting_before_ready_fails_with_its_output(stand_ins):
    daemon = StandIn("import sys; print('bad config'); sys.exit(3)")
    stand_ins.append(daemon)
    with pytest.raises(AssertionError, match=r"exited \(3\) before ready:\nbad config"):
        daemon.start(timeout=30)


def test_a_ready_daemon_starts_and_its_later_output_is_kept(stand_ins):
    daemon = StandIn("import time; print('netagent ready x'); print('later', flush=True); time.sleep(600)")
    stand_ins.append(daemon)
    daemon.start(timeout=30)
    deadline = time.monotonic() + 5
    while "later\n" not in daemon.log:
        assert time.monotonic() < deadline, daemon.log
        time.sleep(0.02)

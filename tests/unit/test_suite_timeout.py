"""The suite-wide per-test timeout (pytest-timeout, set in pyproject.toml):
a hung test, sync or async, fails in minutes and its fixtures still clean up."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

HUNG_TESTS = '''
import asyncio, time
import pytest

@pytest.fixture
def cleanup_marker(tmp_path_factory):
    yield
    (MARKERS / "cleaned").open("a").write("x")

async def test_hung_async(cleanup_marker):
    await asyncio.sleep(600)

def test_hung_sync(cleanup_marker):
    time.sleep(600)
'''


def test_the_suite_has_a_default_timeout_of_minutes(request: pytest.FixtureRequest) -> None:
    timeout = float(request.config.getini("timeout") or 0)
    assert 60 <= timeout <= 600, timeout
    assert request.config.getini("timeout_method") == "signal"  # fixtures tear down after a timeout


def test_a_hung_sync_or_async_test_fails_at_the_timeout_and_cleans_up(tmp_path: Path) -> None:
    test_file = tmp_path / "test_hung.py"
    test_file.write_text(f"from pathlib import Path\nMARKERS = Path({str(tmp_path)!r})\n" + HUNG_TESTS)
    started = time.monotonic()
    # The repo's own ini (plugins, asyncio mode, timeout method), with a 2 s timeout instead of minutes.
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), "-o", "timeout=2",
                           str(test_file)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for name in ("test_hung_async", "test_hung_sync"):
        assert f"FAILED test_hung.py::{name} - Failed: Timeout" in proc.stdout, proc.stdout
    assert (tmp_path / "cleaned").read_text() == "xx"
    assert took < 60, took

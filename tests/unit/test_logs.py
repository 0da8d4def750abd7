"""Structured logging: JSON fields, sandbox adapters, text format, live level changes."""
from __future__ import annotations

import io
import json
import logging

import pytest

from netagent.logs import for_sandbox, set_level, setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_json_lines_carry_sandbox_fields():
    out = io.StringIO()
    setup_logging("INFO", json_output=True, stream=out)
    log = logging.getLogger("netagent.test")
    for_sandbox(log, "sbx-1", slot=7).info("allocated %s", "warm", extra={"op": "allocate"})
    log.info("host line")
    first, second = (json.loads(line) for line in lines(out))
    assert first["msg"] == "allocated warm"
    assert first["level"] == "INFO" and first["logger"] == "netagent.test"
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert (first["sandbox_id"], first["slot"], first["op"]) == ("sbx-1", 7, "allocate")
    assert "sandbox_id" not in second and second["msg"] == "host line"


def test_json_exceptions_and_odd_values():
    out = io.StringIO()
    setup_logging("INFO", json_output=True, stream=out)
    log = for_sandbox(logging.getLogger("netagent.test"), "sbx-2", path=object.__new__(object))
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("release failed")
    rec = json.loads(lines(out)[0])
    assert rec["level"] == "ERROR" and rec["sandbox_id"] == "sbx-2"
    assert "ValueError: boom" in rec["exc"]
    assert rec["path"].startswith("<object")   # not JSON-serialisable -> str()


def test_text_format_shows_sandbox_id():
    out = io.StringIO()
    setup_logging("INFO", json_output=False, stream=out)
    for_sandbox(logging.getLogger("netagent"), "sbx-3").warning("port %d exposed", 8080, extra={"op": "expose"})
    (line,) = lines(out)
    assert "WARNING netagent port 8080 exposed sandbox_id=sbx-3 op=expose" in line


def test_setup_is_idempotent():
    out1, out2 = io.StringIO(), io.StringIO()
    setup_logging("INFO", json_output=False, stream=out1)
    setup_logging("INFO", json_output=True, stream=out2)
    logging.getLogger("netagent").info("once")
    assert lines(out1) == []
    assert len(lines(out2)) == 1 and json.loads(lines(out2)[0])["msg"] == "once"


def test_level_change_at_runtime():
    out = io.StringIO()
    setup_logging("INFO", json_output=True, stream=out)
    log = logging.getLogger("netagent.test")
    log.debug("hidden")
    set_level("debug")
    log.debug("shown")
    set_level("WARNING")
    log.info("hidden too")
    log.warning("still shown")
    assert [json.loads(line)["msg"] for line in lines(out)] == ["shown", "still shown"]
    with pytest.raises(ValueError):
        set_level("LOUD")
    with pytest.raises(ValueError):
        setup_logging("verbose", json_output=True, stream=out)

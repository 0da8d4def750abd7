"""Structured logging: JSON lines (for journald/log shippers) or key=value text.

Fields passed with `extra=` or through `for_sandbox()` (sandbox_id, slot, op, ...)
become JSON keys, or ` key=value` suffixes in text.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import IO, Any

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_FIRST = ("sandbox_id", "slot", "op")


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's non-standard attributes, sandbox_id/slot/op first."""
    extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
    return {**{k: extras.pop(k) for k in _FIRST if k in extras}, **extras}


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage()}
        for key, value in extra_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = extra_fields(record)
        return line + "".join(f" {k}={v}" for k, v in fields.items()) if fields else line


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler setup_logging installed, so a second call replaces it."""


def _level(level: str) -> int:
    name = str(level).upper()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}; got {level!r}")
    return logging.getLevelNamesMapping()[name]


def setup_logging(level: str = "INFO", json_output: bool = False, stream: IO[str] | None = None) -> None:
    """Configure the root logger (idempotent: replaces its own earlier handler).
    Logs go to stderr (journald under systemd) unless `stream` is given."""
    numeric = _level(level)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
        handler.close()
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    root.addHandler(handler)
    root.setLevel(numeric)


def set_level(level: str) -> None:
    """Change the level at runtime (SIGHUP reload)."""
    logging.getLogger().setLevel(_level(level))


class SandboxLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Adds fixed fields to every record; per-call `extra=` adds to them."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra: Mapping[str, Any] = self.extra or {}
        kwargs["extra"] = {**extra, **(kwargs.get("extra") or {})}
        return msg, kwargs


def for_sandbox(logger: logging.Logger, sandbox_id: str, **fields: Any) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    return SandboxLogger(logger, {"sandbox_id": sandbox_id, **fields})

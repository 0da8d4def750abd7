"""Timestamps as ages an operator reads at a glance ("3.2 s ago")."""
from __future__ import annotations

import time


def ago(unix_s: float, now: float | None = None) -> str:
    """How long ago `unix_s` was; "never" for 0 (the API's "not yet")."""
    if not unix_s:
        return "never"
    delta = (time.time() if now is None else now) - unix_s
    if delta < 0:
        return f"{-delta:.1f} s in the future"
    if delta < 60:
        return f"{delta:.1f} s ago"
    if delta < 3600:
        return f"{delta / 60:.0f} min ago"
    if delta < 86400:
        return f"{delta / 3600:.1f} h ago"
    return f"{delta / 86400:.1f} days ago"


def from_ms(value: str | int | None) -> float:
    """An API int64 milliseconds field (a string in protobuf JSON) as unix seconds."""
    return int(value or 0) / 1000

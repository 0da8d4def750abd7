"""How `netagent ls` and `show` print a sandbox's usage (GetUsage)."""
from __future__ import annotations

from typing import Any

PATHS = ("egress", "ingress", "host")


def human_bytes(n: int) -> str:
    value, unit = float(n), "B"
    for next_unit in ("KB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, next_unit
    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"


def totals(u: Any) -> tuple[int, int]:
    """(bytes sent, bytes received) by the sandbox over every path."""
    return (sum(getattr(u, p).sent.bytes for p in PATHS), sum(getattr(u, p).received.bytes for p in PATHS))


def cells(u: Any) -> dict[str, str]:
    """The `ls` columns ("-": allocated after the usage was read)."""
    if u is None:
        return {"sent": "-", "received": "-"}
    sent, received = totals(u)
    return {"sent": human_bytes(sent), "received": human_bytes(received)}


def lines(u: Any) -> list[str]:
    """The `show` lines, one per path."""
    def path(p: str) -> str:
        x = getattr(u, p)
        return (f"{p}: sent {human_bytes(x.sent.bytes)} ({x.sent.packets} pkts), "
                f"received {human_bytes(x.received.bytes)} ({x.received.packets} pkts)")
    return [path(p) for p in PATHS]

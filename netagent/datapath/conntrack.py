"""Conntrack flushes over netlink (no `conntrack` subprocess)."""
from __future__ import annotations

from pyroute2 import NFCTSocket


def flush_mark(mark: int) -> None:
    """Delete every entry carrying `mark` in the calling thread's netns."""
    with NFCTSocket() as ct:
        ct.flush(mark=mark, mark_mask=0xFFFFFFFF)


def flush_all() -> None:
    """Delete every entry in the calling thread's netns (a slot's own table)."""
    with NFCTSocket() as ct:
        ct.flush()

"""Conntrack flushes over netlink (no `conntrack` subprocess)."""
from __future__ import annotations

import os
import threading

from pyroute2 import NFCTSocket


def flush_mark(mark: int, mask: int = 0xFFFFFFFF) -> None:
    """Delete every entry whose mark matches under `mask`, in the calling
    thread's netns. The kernel walks its whole (global) conntrack hash for
    this: ~13 ms for 262,144 buckets here, whatever the number of entries."""
    with NFCTSocket() as ct:
        ct.flush(mark=mark, mark_mask=mask)


def flush_all() -> None:
    """Delete every entry in the calling thread's netns (a slot's own table)."""
    with NFCTSocket() as ct:
        ct.flush()


def lower_thread_priority(nice: int = 10) -> None:
    """Make the calling thread yield the CPU to the API and nft threads (nice is
    per thread on Linux; kernel work done in its syscalls is charged to it)."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)

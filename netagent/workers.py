"""Worker threads that live in the host netns.

`HostWorker` is one thread owning the host's libnftables context (contexts are
per-netns and not thread-safe). `BuildPool` runs slot builds with bounded
concurrency; each of its threads starts in the host netns.
"""
from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import netns

T = TypeVar("T")


class _Executor:
    def __init__(self, host_netns: str | None, workers: int, name: str):
        self._local = threading.local()
        self._host_netns = host_netns
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=self._init)

    def _init(self) -> None:
        name_os_thread(threading.current_thread().name)
        netns.enter_for_good(self._host_netns)

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def local(self, name: str, make: Callable[[], T]) -> T:
        """This worker thread's own `name` (made on first use, in the host netns:
        nft contexts and sockets are per netns and not thread-safe); call only
        from inside the thread."""
        obj = getattr(self._local, name, None)
        if obj is None:
            obj = make()
            setattr(self._local, name, obj)
        return obj  # type: ignore[no-any-return]


def name_os_thread(name: str) -> None:
    """Give the calling thread its name in the kernel too (15 bytes), so `top -H`
    and /proc/<pid>/task/*/comm tell the cleaner's CPU from the builds'."""
    PR_SET_NAME = 15
    ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


class HostWorker(_Executor):
    def __init__(self, host_netns: str | None):
        super().__init__(host_netns, 1, "netagent-host")


class Cleaner(_Executor):
    """Conntrack flushes walk the whole conntrack hash: keep them off the host
    worker so they never delay an allocate's nft transaction."""

    def __init__(self, host_netns: str | None):
        super().__init__(host_netns, 1, "netagent-clean")

    def _init(self) -> None:
        super()._init()
        from .datapath.conntrack import lower_thread_priority
        lower_thread_priority()


class Readers(_Executor):
    """Periodic kernel readings (the metrics' link and drop counters, the usage
    counters): on a thread of their own, so a slow reading (a second or more
    under churn) never keeps released slots waiting for the cleaner."""

    def __init__(self, host_netns: str | None):
        super().__init__(host_netns, 1, "netagent-read")


class DnsThreads(_Executor):
    """Upstream DNS queries: their sockets must be made in the host netns."""

    def __init__(self, host_netns: str | None, workers: int = 16):
        super().__init__(host_netns, workers, "netagent-dns")


class BuildPool(_Executor):
    def __init__(self, host_netns: str | None, workers: int):
        super().__init__(host_netns, workers, "netagent-build")


async def cancel_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has stopped."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until `event` is set or `timeout` passes. Not asyncio.wait_for: on
    Python 3.11 it swallows a cancellation that races the event, so a loop
    using it could never be stopped (seen as a hang in Agent.stop)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass

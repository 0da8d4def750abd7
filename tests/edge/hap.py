"""Fixtures' plumbing for the HAProxy edge: a real haproxy and the control plane
(in this process) over a real SQLite or Redis registry."""
from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

from netagent.edge.control import EdgeControl
from netagent.edge.feeds import open_feed
from netagent.edge.runtime import HAProxyRuntime
from netagent.registry import Registry
from tests.testbed.haproxy_proc import HAProxy

DOMAIN = "sbx.edge.test"


@contextlib.asynccontextmanager
async def running_edge(workdir: Path, registry: Registry, netns: str | None = None,
                       **settings: object) -> AsyncIterator[tuple[HAProxy, EdgeControl]]:
    """haproxy started, its maps synced from `registry` by a running EdgeControl."""
    haproxy = HAProxy.for_test(workdir, DOMAIN, **settings)
    haproxy.start(netns=netns)
    runtime = HAProxyRuntime(haproxy.settings.admin_socket, haproxy.settings.map_dir)
    feed = open_feed(registry)  # type: ignore[arg-type]
    control = EdgeControl(feed, runtime, haproxy.settings.shards)
    task = asyncio.create_task(control.run())
    try:
        async with asyncio.timeout(10):
            await control.synced.wait()
        yield haproxy, control
    finally:
        task.cancel()
        try:
            (outcome,) = await asyncio.gather(task, return_exceptions=True)
        finally:   # haproxy is stopped even if the control plane crashed
            try:
                await feed.close()
                await runtime.close()
            finally:
                haproxy.stop()
        if isinstance(outcome, Exception):
            raise AssertionError("the control plane crashed") from outcome


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 3.0, every_s: float = 0.01) -> float:
    """Seconds until check() is true; fails the test past timeout_s."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not true within {timeout_s} s")
        await asyncio.sleep(every_s)
    return time.monotonic() - start


@contextlib.contextmanager
def edge_process(*args: str) -> Iterator[subprocess.Popen]:
    """`netagent edge ARGS` as a process, killed at the end if it is still running."""
    proc = subprocess.Popen([sys.executable, "-m", "netagent", "edge", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

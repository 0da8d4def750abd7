"""Fixtures' plumbing for the HAProxy edge: a real haproxy and the control plane
(in this process, or as its own process) over a real SQLite or Redis registry."""
from __future__ import annotations

import asyncio
import contextlib
import signal
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


class ControlPlane:
    """`netagent edge --haproxy-socket …` as its own process, so a test can stop it
    (SIGSTOP: a control plane that has not seen a new HAProxy yet), or kill -9 it."""

    def __init__(self, haproxy: HAProxy, registry_url: str, workdir: Path) -> None:
        s = haproxy.settings
        self.args = [sys.executable, "-m", "netagent", "edge", "--registry", registry_url, "--domain", DOMAIN,
                     "--haproxy-socket", s.admin_socket, "--map-dir", s.map_dir, "--shards", str(s.shards)]
        self.log_path = workdir / "control.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


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

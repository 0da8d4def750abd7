"""The systemd notify protocol (sd_notify(3)) without dependencies.

Messages the agent sends: READY=1 once serving, RELOADING=1 / READY=1 around a
SIGHUP reload, STOPPING=1 on shutdown, WATCHDOG=1 while healthy, STATUS=<text>.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("netagent.sdnotify")


def _address(path: str) -> str | None:
    if path.startswith("@"):
        return "\0" + path[1:]   # abstract namespace
    if path.startswith("/"):
        return path
    return None   # vsock and other forms are not used by systemd for services


def notify(message: str) -> bool:
    """Send one notification; False when not under systemd or the send failed."""
    path = os.environ.get("NOTIFY_SOCKET")
    address = _address(path) if path else None
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError as exc:
        log.warning("sd_notify %r failed: %s", message.split("\n", 1)[0], exc)
        return False


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None if the
    watchdog is off or meant for another process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    try:
        if pid and int(pid) != os.getpid():
            return None
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None


async def watchdog_loop(is_healthy: Callable[[], bool]) -> None:
    """Send WATCHDOG=1 every interval while `is_healthy()`; returns at once if the
    watchdog is off. A stalled event loop stops the pings too, which is the point."""
    interval = watchdog_interval()
    if interval is None:
        return
    was_healthy = True
    while True:
        try:
            healthy = bool(is_healthy())
        except Exception:
            log.exception("health check raised")
            healthy = False
        if healthy:
            notify("WATCHDOG=1")
        elif was_healthy:
            log.error("unhealthy: withholding WATCHDOG=1; systemd restarts the agent after WatchdogSec")
        was_healthy = healthy
        await asyncio.sleep(interval)

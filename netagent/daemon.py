"""`netagent serve`: reconcile, fill the pool, run until SIGTERM.

SIGTERM stops background work and exits; the datapath (netns, links, nft
table, elements) is left exactly as it is, so sandboxes keep their traffic.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from .agent import Agent
from .config import Config

log = logging.getLogger("netagent")


def sd_notify(message: str) -> None:
    """systemd notify protocol (no-op outside systemd)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.sendall(message.encode())


async def serve(config: Config) -> None:
    agent = Agent(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.start()
    try:
        await agent.wait_pool_ready(timeout=300)
    except TimeoutError as exc:
        log.warning("%s; serving anyway", exc)
    sd_notify("READY=1")
    log.info("netagent ready: uplink=%s slots=%d ready=%d allocations=%d",
             agent.host_info.uplink if agent.host_info else "?", len(agent.slots), len(agent.ready),
             len(agent.allocations))
    print(f"netagent ready prefix={config.prefix} ready_slots={len(agent.ready)}", flush=True)
    await stop.wait()
    sd_notify("STOPPING=1")
    log.info("stopping; the datapath stays in place")
    await agent.stop()

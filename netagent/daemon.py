"""`netagent serve`: reconcile, fill the pool, serve the API until SIGTERM.

SIGTERM stops accepting calls, lets in-flight calls finish and exits; the
datapath (netns, links, nft table, elements, conntrack) stays exactly as it is,
so sandboxes keep their traffic. SIGHUP reloads what can change live.
"""
from __future__ import annotations

import asyncio
import logging
import signal

from . import config as config_mod
from . import netns
from .agent import Agent
from .api.server import ApiServer
from .config import Config
from .errors import ConfigError
from .logs import set_level
from .sdnotify import notify, watchdog_loop

log = logging.getLogger("netagent")
LIVE_FIELDS = ("log_level", "pool_size", "default_internet")


async def serve(config: Config, config_path: str | None = None) -> None:
    netns.enter_for_good(config.host_netns)  # every socket we open (API, metrics) lives there
    agent = Agent(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload(agent, config_path))

    await agent.start()
    api = ApiServer(agent, config, on_error=agent.metrics.error)
    await api.start()
    metrics_port = start_metrics(agent)
    refresher = asyncio.create_task(refresh_metrics(agent))
    want = min(config.pool_size, config.ready_min_slots)
    try:
        await agent.wait_pool_ready(timeout=300, at_least=want)
    except TimeoutError as exc:
        log.warning("%s; serving anyway", exc)
    await api.set_serving(True)
    notify("READY=1")
    watchdog = asyncio.create_task(watchdog_loop(lambda: agent.healthy()))
    log.info("netagent ready: uplink=%s slots=%d ready=%d allocations=%d",
             agent.host_info.uplink if agent.host_info else "?", len(agent.slots), len(agent.ready),
             len(agent.allocations))
    print(f"netagent ready prefix={config.prefix} socket={config.api_socket} ready_slots={len(agent.ready)} "
          f"metrics_port={metrics_port or 0}", flush=True)

    await stop.wait()
    notify("STOPPING=1")
    log.info("stopping: finishing in-flight calls; the datapath stays in place")
    watchdog.cancel()
    refresher.cancel()
    await api.stop()
    await agent.stop()


def reload(agent: Agent, config_path: str | None) -> None:
    """SIGHUP: apply log level, pool size and policy defaults; report the rest."""
    try:
        new = config_mod.load(config_path)
    except ConfigError as exc:
        log.error("reload refused, keeping the running config: %s", exc)
        return
    old = agent.config
    changed = {k for k in type(old).model_fields if getattr(old, k) != getattr(new, k)}
    for key in changed & set(LIVE_FIELDS):
        setattr(old, key, getattr(new, key))
    set_level(old.log_level)
    agent.pool_changed()
    if rest := sorted(changed - set(LIVE_FIELDS)):
        log.warning("reload: %s change only on restart", ", ".join(rest))
    log.info("reloaded: %s", ", ".join(sorted(changed & set(LIVE_FIELDS))) or "nothing changed")




def start_metrics(agent: Agent) -> int | None:
    address = agent.config.metrics_address
    if not address:
        return None
    host, _, port = address.rpartition(":")
    bound = agent.metrics.start_http(host, int(port))
    log.info("metrics on http://%s:%d/metrics", host, bound)
    return bound


async def refresh_metrics(agent: Agent) -> None:
    while True:
        try:
            await agent.refresh_metrics()
        except Exception:
            log.exception("metrics refresh failed")
        await asyncio.sleep(agent.config.metrics_refresh_s)

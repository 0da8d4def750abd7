"""`netagent serve`: reconcile, fill the pool, serve the API until SIGTERM.

SIGTERM stops accepting calls, lets in-flight calls finish and exits; the
datapath (netns, links, nft table, elements, conntrack) stays exactly as it is,
so sandboxes keep their traffic. SIGHUP reloads what can change live.
"""
from __future__ import annotations

import asyncio
import gc
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
# What a reload changes in the running agent; other changes wait for a restart.
LIVE_KEYS = ("log_level", "pool.size", "pool.max_size", "pool.demand_window_s", "default_internet")


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
    want = min(config.pool.size, config.pool.ready_min_slots)
    try:
        await agent.wait_pool_ready(timeout=300, at_least=want)
    except TimeoutError as exc:
        log.warning("%s; serving anyway", exc)
    # Start-up's objects (modules, gRPC and pydantic machinery, the reconciled
    # inventory: 73,000 before the first sandbox) never die: frozen, they
    # leave the cyclic GC's walks. A full collection, which stops every
    # thread, took 60.9 ms of CPU at 2,000 sandboxes, 8.2 ms frozen
    # (docs/performance.md, "An idle host, and the stalls").
    gc.collect()
    gc.freeze()
    await api.set_serving(True)
    notify("READY=1")
    watchdog = asyncio.create_task(watchdog_loop(lambda: agent.healthy()))
    log.info("netagent ready: uplink=%s slots=%d ready=%d allocations=%d",
             agent.host_info.uplink if agent.host_info else "?", len(agent.slots), len(agent.ready),
             len(agent.allocations))
    print(f"netagent ready prefix={config.prefix} socket={config.api.socket} ready_slots={len(agent.ready)} "
          f"metrics_port={metrics_port or 0}", flush=True)

    await stop.wait()
    notify("STOPPING=1")
    log.info("stopping: finishing in-flight calls; the datapath stays in place")
    watchdog.cancel()
    refresher.cancel()
    await api.stop()
    await agent.stop()


def reload(agent: Agent, config_path: str | None) -> None:
    """SIGHUP: build a new config; swap in one with its live keys (log level,
    the pool's depth, policy default) and report the rest as needing a restart."""
    try:
        new = config_mod.load(config_path)
    except ConfigError as exc:
        log.error("reload refused, keeping the running config: %s", exc)
        return
    old = agent.config
    changed = sorted(k for k, v in flat(new).items() if flat(old).get(k) != v)
    live = [k for k in changed if k in LIVE_KEYS]
    agent.reconfigure(old.replace(log_level=new.log_level, pool_size=new.pool.size, pool_max_size=new.pool.max_size,
                                  pool_demand_window_s=new.pool.demand_window_s, default_internet=new.default_internet))
    set_level(agent.config.log_level)
    if rest := [k for k in changed if k not in LIVE_KEYS]:
        log.warning("reload: %s change only on restart", ", ".join(rest))
    log.info("reloaded: %s", ", ".join(live) or "nothing changed")


def flat(config: Config) -> dict[str, object]:
    """section.key -> value, for comparing two configs."""
    out: dict[str, object] = {}
    for key, value in config.model_dump().items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def start_metrics(agent: Agent) -> int | None:
    address = agent.config.metrics.address
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
        await asyncio.sleep(agent.config.metrics.refresh_s)

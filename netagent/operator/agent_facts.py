"""The running agent's facts win over the CLI's own config file.

The agent may run with NETAGENT_* overrides or another file than the one the
CLI reads; when it answers GetHostInfo, the commands use its prefix, netns,
uplink, node id, registry, host port range, probe timing and state dir. The
registry URL comes back without its password: when it names the same
registry as the CLI's file, the file's URL (with the password) is kept."""
from __future__ import annotations

from typing import Any

from ..config import Config
from .registrycheck import shown_url


def from_agent(config: Config, info: Any) -> Config:
    """`config` with the facts of a HostInfo message in place."""
    update: dict[str, Any] = {"prefix": info.prefix or config.prefix, "node_id": info.node_id or config.node_id,
                              "uplink": info.uplink or config.uplink, "host_netns": info.host_netns or None}
    if info.host_port_low and info.host_port_high:
        update["host_port_range"] = (info.host_port_low, info.host_port_high)
    if info.probe_interval_s:
        update |= {"probe_interval_s": info.probe_interval_s, "probe_timeout_s": info.probe_timeout_s}
    if info.state_dir:
        update["state_dir"] = info.state_dir
    own = config.registry_in_effect()
    update["registry_url"] = own if shown_url(own) == info.registry else info.registry
    return config.replace(**update)


def effective(config: Config, client: Any) -> Config:
    """The agent's view if it answers, else the CLI's own config."""
    try:
        return from_agent(config, client.host_info())
    except client.rpc_error:
        return config

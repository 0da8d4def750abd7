"""The light client path: what `netagent status` and `ls` need to find the agent,
read from the config's sources without validating the whole Config (pydantic
alone costs ~0.2 s of start-up). The running agent's own facts (HostInfo) win,
as agent_facts does for the other commands."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from .. import configfile
from ..configfile import DEFAULT_SOCKET

DEFAULT_PREFIX = "na"


@dataclass(frozen=True)
class ClientSettings:
    socket: str
    prefix: str = DEFAULT_PREFIX
    host_netns: str | None = None       # a path, like Config.host_netns
    agent_info: Any = field(default=None, compare=False)   # the HostInfo `effective` read (status reuses it)

    @classmethod
    def read(cls, path: str | None, environ: dict[str, str] | None = None) -> ClientSettings:
        """From the TOML file and NETAGENT_* (flat or section keys, as config.py
        takes them); ConfigError if the file cannot be read."""
        raw = configfile.read(path, environ)
        api = raw.get("api") if isinstance(raw.get("api"), dict) else {}
        socket = raw.get("api_socket") or api.get("socket") or DEFAULT_SOCKET
        return cls(socket=str(socket), prefix=str(raw.get("prefix") or DEFAULT_PREFIX),
                   host_netns=netns_path(raw.get("host_netns")))

    def effective(self, client: Any) -> ClientSettings:
        """With the agent's prefix and netns if it answers (else these)."""
        try:
            info = client.host_info()
        except client.rpc_error:
            return self
        return replace(self, prefix=info.prefix or self.prefix, host_netns=info.host_netns or None, agent_info=info)


def netns_path(name: object) -> str | None:
    if not name:
        return None
    text = str(name)
    return text if text.startswith("/") else os.path.join("/run/netns", text)

"""Start the DNS proxy for the agent: its upstream socket and its listeners
live in the host netns (made on the host worker), its policy lookups and
admissions are the agent's callables."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..config import Config
from .proxy import (
    Admit,
    DnsProxy,
    Lookup,
    Ruled,
    Steer,
    UpstreamClient,
    bind_sockets,
    query_tcp_blocking,
    upstream_socket,
)
from .proxy import serve as serve_dns


async def start_proxy(config: Config, on_host: Callable[..., Awaitable[Any]],
                      on_dns_thread: Callable[..., Awaitable[Any]], lookup: Lookup,
                      admit: Admit, ruled: Ruled | None = None,
                      steer: Steer | None = None) -> tuple[DnsProxy, tuple[Any, ...]]:
    """The proxy and its servers/transports (close them to stop it)."""
    upstreams = [str(u) for u in config.dns.upstreams] or resolv_conf_nameservers()
    upstream = UpstreamClient(lambda q, up, t: on_dns_thread(query_tcp_blocking, q, up, t))
    sock = await on_host(upstream_socket)  # the socket keeps the host netns
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: upstream, sock=sock)
    proxy = DnsProxy(lookup, admit, upstream.query, upstreams, config.dns.ttl_floor_s, config.dns.ttl_cap_s,
                     ruled=ruled, steer=steer)
    udp, tcp = await on_host(bind_sockets, config.dns.proxy_port)
    return proxy, (*await serve_dns(proxy, udp, tcp), transport)


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return []
    return [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1
            and ":" not in ln.split()[1]]

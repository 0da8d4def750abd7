"""Redis Cluster plumbing for the Redis registry: the `redis+cluster://` URL, the
client, the health check, and a sharded change subscriber.

redis-py's cluster client follows MOVED/ASK redirections and re-reads the slot
map after a failover; this module only builds it, refuses a cluster that is not
`cluster_state:ok`, and subscribes to sharded channels (SSUBSCRIBE), which
redis-py's asyncio cluster client does not offer.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
# No retries inside a call, as on a standalone Redis: a script retried after a
# timeout may already have run, and would then report its own write as refused.
# MOVED/ASK are followed regardless; after a connection error the client re-reads
# the slot map on its next call (the publisher retries every retry_s).
CLUSTER_RETRIES = 0


@dataclass(frozen=True)
class ClusterTarget:
    nodes: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    tls: bool


def parse_cluster_url(url: str, default_prefix: str) -> tuple[ClusterTarget, str, str]:
    """redis+cluster://[user:pass@]host:port[,host:port...][/][?prefix=p]
    -> (target, key prefix, URL safe to log). ValueError on anything else."""
    scheme = next((s for s in CLUSTER_SCHEMES if url.startswith(s)), None)
    if scheme is None:
        raise ValueError(f"not a cluster URL: {url!r}")
    rest, _, query = url[len(scheme):].partition("?")
    rest = rest.rstrip("/")
    if "/" in rest:
        raise ValueError(f"cluster URL {url!r}: Redis Cluster has only database 0, give no path")
    userinfo, _, hosts = rest.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) if colon else None)
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"cluster URL {url!r}: {item!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - {"prefix"}
    if unknown:
        raise ValueError(f"cluster URL {url!r}: unknown option(s) {sorted(unknown)}")
    user_shown = (username or "") + (":***" if password is not None else "")
    safe = scheme + (f"{user_shown}@" if user_shown else "") + hosts
    target = ClusterTarget(tuple(nodes), username, password, tls=scheme.startswith("rediss"))
    return target, options.get("prefix", default_prefix), safe


def cluster_client(target: ClusterTarget, connect_timeout_s: float, command_timeout_s: float) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username, password=target.password, ssl=target.tls, decode_responses=True,
        socket_connect_timeout=connect_timeout_s, socket_timeout=command_timeout_s,
        retry=Retry(NoBackoff(), CLUSTER_RETRIES))


async def require_cluster_ok(target: ClusterTarget, connect_timeout_s: float, command_timeout_s: float) -> None:
    """Raises ValueError unless every node the URL names that answers says
    cluster_state:ok (and at least one answers). A node that does not answer is
    tolerated: a failed-over master stays in the URL. Asked over plain connections,
    before the cluster client starts: redis-py's initialize sends COMMAND to one
    primary and fails outright if that one is the dead master of a half-up cluster."""
    states: dict[str, str] = {}
    for host, port in target.nodes:
        node = aioredis.Redis(host=host, port=port, username=target.username, password=target.password,
                              ssl=target.tls, decode_responses=True, socket_connect_timeout=connect_timeout_s,
                              socket_timeout=command_timeout_s)
        try:
            info = await node.cluster("info")
            states[f"{host}:{port}"] = info.get("cluster_state", "?") if isinstance(info, dict) else "?"
        except (RedisError, OSError):
            continue
        finally:
            await node.aclose()
    if not states:
        raise ValueError("no node named in the URL answered CLUSTER INFO")
    bad = {name: state for name, state in states.items() if state != "ok"}
    if bad:
        shown = ", ".join(f"{name} says cluster_state:{state}" for name, state in sorted(bad.items()))
        raise ValueError(f"cluster not fully up ({shown}): refusing it, nothing is written")


class ShardedSubscriber:
    """SSUBSCRIBE to each channel on the master that serves its slot, one connection per
    master. The surface RedisFeed uses (subscribe, get_message, aclose) as redis-py's PubSub.
    A lost connection, or the server moving a channel's slot away (it sends sunsubscribe),
    surfaces as ConnectionError from get_message: the reader then takes a new snapshot."""

    def __init__(self, client: RedisCluster, target: ClusterTarget, connect_timeout_s: float) -> None:
        self.client = client
        self.target = target
        self.connect_timeout_s = connect_timeout_s
        self._queue: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()
        self._conns: list[aioredis.Connection] = []
        self._readers: list[asyncio.Task[None]] = []

    async def subscribe(self, *channels: str) -> None:
        await self.client.initialize()
        # A fresh slot map: a new subscription follows a failover the client has not
        # stumbled on yet (redis-py re-reads it only after an error on a command).
        await self.client.nodes_manager.initialize()
        by_master: dict[tuple[str, int], list[str]] = defaultdict(list)
        for channel in channels:
            node = self.client.get_node_from_key(channel)
            by_master[(node.host, node.port)].append(channel)
        for (host, port), names in by_master.items():
            conn = aioredis.Connection(
                host=host, port=port, username=self.target.username, password=self.target.password,
                decode_responses=True, socket_connect_timeout=self.connect_timeout_s, socket_timeout=None)
            self._conns.append(conn)
            await conn.connect()
            # SSUBSCRIBE takes several channels only of one slot: one command per channel, all sent
            # at once, then one confirmation each.
            await conn.send_packed_command(conn.pack_commands([("SSUBSCRIBE", name) for name in names]))
            for _ in names:
                reply = await conn.read_response(timeout=self.connect_timeout_s)
                if not isinstance(reply, list) or reply[0] != "ssubscribe":
                    raise RedisConnectionError(f"SSUBSCRIBE on {host}:{port} answered {reply!r}")
            self._readers.append(asyncio.create_task(self._read(conn), name=f"ssubscribe-{host}:{port}"))

    async def _read(self, conn: aioredis.Connection) -> None:
        try:
            while True:
                reply = await conn.read_response()
                if isinstance(reply, list) and reply[0] == "smessage":
                    self._queue.put_nowait({"type": "message", "channel": reply[1], "data": reply[2]})
                elif isinstance(reply, list) and reply[0] == "sunsubscribe":
                    raise RedisConnectionError(f"{conn.host}:{conn.port} no longer serves {reply[1]} "
                                               "(slot moved)")
        except Exception as exc:  # noqa: BLE001 - handed to get_message, which raises it
            self._queue.put_nowait(exc if isinstance(exc, RedisConnectionError)
                                   else RedisConnectionError(f"{conn.host}:{conn.port}: {exc!r}"))

    async def get_message(self, timeout: float = 0.0) -> dict[str, Any] | None:
        if timeout <= 0:
            if self._queue.empty():
                return None
            item = self._queue.get_nowait()
        else:
            try:
                async with asyncio.timeout(timeout):
                    item = await self._queue.get()
            except TimeoutError:
                return None
        if isinstance(item, Exception):
            raise item
        return item

    async def aclose(self) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for conn in self._conns:
            await conn.disconnect()
        self._readers, self._conns = [], []

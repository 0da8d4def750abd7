"""Redis registry backend: one registry shared by many nodes and edge proxies,
on a standalone Redis (or a Sentinel-managed primary) or on Redis Cluster.

Keys (prefix "netagent:", `?prefix=` in the URL overrides it; b = crc32(sandbox id) % 64):
  {prefix}{b}:sbx:{sandbox_id}        sandbox record JSON: a v2 record without expiry (served
                                      while its node key lives), a tombstone with PX TTL
  {prefix}{b}:node:{node_id}:sbx      SET of the node's sandbox ids in bucket b
  {prefix}node:{node_id}              node record JSON, PX TTL (the heartbeat)
Change channel: {prefix}changes (PUBLISH), or on a cluster {prefix}{b}:changes (SPUBLISH).

The `{b}` hash tag puts a sandbox's record, its bucket's node set and its
bucket's change channel in one slot, so every per-sandbox script is single-slot
and runs on Redis Cluster. The owner check plus seq compare-and-set, the
heartbeat and the node listing are Lua scripts, atomic per bucket; a heartbeat
is one script on the node record (the node-id check, then its SET), then one
script call per bucket the node has sandboxes in.

Short socket timeouts and no retries inside a call (a cluster client follows
MOVED/ASK and re-reads the slot map on the call after an error): an outage
surfaces as a RegistryError within about a second; the caller decides when to
retry. The connection pool reconnects on the next call.
"""
from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from .base import NodeIdInUse, Registry, RegistryError, UnreadableRecord
from .ownership import INSTANCE_LABEL, Verdict
from .records import NodeRecord, SandboxRecord
from .rediscluster import (
    CLUSTER_SCHEMES,
    ShardedSubscriber,
    cluster_client,
    parse_cluster_url,
    require_cluster_ok,
)
from .redislua import SCRIPTS

T = TypeVar("T")
R = TypeVar("R", SandboxRecord, NodeRecord)

DEFAULT_PREFIX = "netagent:"
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 1.0
BUCKETS = 64   # hash-tag buckets: spread over the cluster's masters, few enough to walk


def split_url(url: str) -> tuple[str, str, str]:
    """-> (URL for redis-py without our `prefix` option, key prefix, URL safe to log)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    redis_url = url
    if any(k == "prefix" for k, _ in query):
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        redis_url = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
    host = parts.netloc.rsplit("@", 1)[-1]
    user = (parts.username or "") + (":***" if parts.password is not None else "")
    netloc = f"{user}@{host}" if user else host
    return redis_url, prefix, f"{parts.scheme}://{netloc}{parts.path}"


def ttl_ms(ttl_s: float) -> int:
    return max(1, math.ceil(ttl_s * 1000))


def bucket_of(sandbox_id: str) -> int:
    return zlib.crc32(sandbox_id.encode()) % BUCKETS


class RedisRegistry(Registry):
    def __init__(self, url: str) -> None:
        self.url = url
        self.cluster = url.startswith(CLUSTER_SCHEMES)
        if self.cluster:
            self._target, self.prefix, self.safe_url = parse_cluster_url(url, DEFAULT_PREFIX)
        else:
            self._redis_url, self.prefix, self.safe_url = split_url(url)
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"registry URL {self.safe_url}: the key prefix may not contain braces "
                             "(they would change the hash tag that keeps a sandbox's keys in one slot)")
        self._client: Any = None   # aioredis.Redis or RedisCluster
        self._scripts: dict[str, Any] = {}

    def sandbox_key(self, sandbox_id: str) -> str:
        return f"{self._bucket_prefix(bucket_of(sandbox_id))}sbx:{sandbox_id}"

    def node_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def node_set_key(self, node_id: str, bucket: int) -> str:
        return f"{self._bucket_prefix(bucket)}node:{node_id}:sbx"

    def _bucket_prefix(self, bucket: int) -> str:
        return f"{self.prefix}{{{bucket}}}:"

    def change_channel(self, bucket: int) -> str:
        return f"{self._bucket_prefix(bucket)}changes" if self.cluster else f"{self.prefix}changes"

    @property
    def change_channels(self) -> list[str]:
        """What an edge subscribes to: one channel, or on a cluster one sharded channel per bucket."""
        return [self.change_channel(b) for b in range(BUCKETS)] if self.cluster else [self.change_channel(0)]

    def _ensure_client(self) -> Any:
        if self._client is None:
            if self.cluster:
                self._client = cluster_client(self._target, CONNECT_TIMEOUT_S, COMMAND_TIMEOUT_S)
            else:
                client = aioredis.Redis.from_url(
                    self._redis_url, decode_responses=True,
                    socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S,
                    retry=Retry(NoBackoff(), 0), retry_on_error=[])
                self._scripts = {name: client.register_script(lua) for name, lua in SCRIPTS.items()}
                self._client = client
        return self._client

    async def _script(self, name: str, keys: list[str], args: list[Any], pipe: Any = None) -> Any:
        """Runs (or, given a pipeline, queues) a script. On a cluster it is sent as EVAL:
        a promoted replica may not have the script cached, and EVAL needs no NOSCRIPT retry."""
        if self.cluster:
            if pipe is not None:
                return pipe.eval(SCRIPTS[name], len(keys), *keys, *args)
            return await self._ensure_client().eval(SCRIPTS[name], len(keys), *keys, *args)
        return await self._scripts[name](keys=keys, args=args, client=pipe or self._ensure_client())

    async def _call(self, op: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        client = self._ensure_client()
        try:
            return await fn(client)
        except (RedisError, RedisClusterException, OSError) as exc:  # OSError covers TimeoutError too
            if self.cluster:
                # A fresh client, so the next call reads the slot map again: redis-py re-reads it
                # after an error on a single command, but not after a failed pipeline.
                await self.close()
            raise RegistryError(f"redis registry {self.safe_url}: {op} failed: "
                                f"{type(exc).__name__}: {exc}") from exc

    async def connect(self) -> None:
        """Creates the client and pings (on a cluster: also refuses one that is not
        cluster_state:ok); the object stays usable if this fails."""
        if not self.cluster:
            await self._call("ping", lambda r: r.ping())
            return
        try:
            await require_cluster_ok(self._target, CONNECT_TIMEOUT_S, COMMAND_TIMEOUT_S)
        except ValueError as exc:
            raise RegistryError(f"redis registry {self.safe_url}: {exc}") from exc
        await self._call("ping", lambda r: r.ping())

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass   # a dead node's connection: nothing left to close

    def _put_args(self, rec: SandboxRecord, ttl_s: float, claim: bool) -> tuple[list[str], list[Any]]:
        bucket = bucket_of(rec.sandbox_id)
        keys = [self.sandbox_key(rec.sandbox_id), self.node_set_key(rec.node_id, bucket)]
        args = [rec.to_json(), rec.seq, ttl_ms(ttl_s), "1" if rec.deleted else "0", rec.sandbox_id,
                self.change_channel(bucket), rec.node_id, "1" if claim else "0",
                "1" if rec.lives_with_node else "0", "SPUBLISH" if self.cluster else "PUBLISH"]
        return keys, args

    async def write_many(self, records: list[SandboxRecord], ttl_s: float,
                         claims: list[bool] | None = None) -> list[Verdict]:
        """One pipelined round trip for the batch (per master on a cluster; each write is still its
        own atomic script)."""
        flags = claims or [False] * len(records)

        async def run(pipe: Any) -> list[Any]:
            for rec, claim in zip(records, flags, strict=True):
                await self._script("put", *self._put_args(rec, ttl_s, claim), pipe=pipe)  # queued, not sent
            return await pipe.execute()
        return [Verdict(int(r)) for r in await self._call("write_many", lambda c: self._pipelined(c, run))]

    async def _pipelined(self, client: Any, run: Callable[[Any], Awaitable[T]]) -> T:
        async with client.pipeline(transaction=False) as pipe:
            return await run(pipe)

    async def refresh(self, node: NodeRecord, sandbox_ids: list[str], ttl_s: float) -> bool:
        ttl = ttl_ms(ttl_s)
        args = [node.to_json(), ttl, str(node.extra.get(INSTANCE_LABEL, ""))]
        result = await self._call("refresh", lambda r: self._script("node_claim", [self.node_key(node.node_id)], args))
        if result[0] == -2:
            try:
                NodeRecord.from_json(result[1])
                reason: object = "not a v1 node record"
            except ValueError as exc:
                reason = exc
            raise NodeIdInUse.unreadable(node.node_id, reason)
        if result[0] == -1:
            raise NodeIdInUse.by(node, self._decode(NodeRecord, result[1]), await self.server_time())
        node_was_missing = bool(result[0] == 1)
        by_bucket: dict[int, list[str]] = defaultdict(list)
        for sid in dict.fromkeys(sandbox_ids):
            by_bucket[bucket_of(sid)].append(sid)
        if not by_bucket:
            return node_was_missing

        async def run(pipe: Any) -> list[Any]:
            for bucket, ids in by_bucket.items():
                keys = [self.node_set_key(node.node_id, bucket), *map(self.sandbox_key, ids)]
                await self._script("refresh", keys, [ttl, node.node_id, *ids], pipe=pipe)
            return await pipe.execute()
        await self._call("refresh", lambda c: self._pipelined(c, run))
        return node_was_missing

    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        raw = await self._call("get_sandbox", lambda r: r.get(self.sandbox_key(sandbox_id)))
        if raw is None:
            return None
        record = self._decode(SandboxRecord, raw)
        if record.deleted:
            return None
        if record.lives_with_node and not await self._call("get_sandbox",
                                                           lambda r: r.exists(self.node_key(record.node_id))):
            return None                                 # its node is dead
        return record

    async def get_node(self, node_id: str) -> NodeRecord | None:
        raw = await self._call("get_node", lambda r: r.get(self.node_key(node_id)))
        return None if raw is None else self._decode(NodeRecord, raw)

    async def node_sandboxes(self, node_id: str) -> list[str]:
        """One script call per bucket, pipelined."""
        async def run(pipe: Any) -> list[Any]:
            for bucket in range(BUCKETS):
                await self._script("node_sandboxes", [self.node_set_key(node_id, bucket)],
                                   [self._bucket_prefix(bucket) + "sbx:", node_id], pipe=pipe)
            return await pipe.execute()
        replies = await self._call("node_sandboxes", lambda c: self._pipelined(c, run))
        return sorted(sid for ids in replies for sid in ids)

    # -- for edges: a snapshot, then the change channel (docs/registry.md) --

    async def raw_records(self, batch: int = 1000) -> list[tuple[str, str, int]]:
        """(sandbox id, record JSON, remaining TTL in ms) of every sandbox key, tombstones
        too, undecoded (SCAN of every master, then per bucket one script call per batch for
        values and TTLs, pipelined)."""
        async def run(client: Any) -> list[tuple[str, str, int]]:
            by_bucket: dict[str, list[str]] = defaultdict(list)
            async for key in client.scan_iter(match=f"{self.prefix}{{*}}:sbx:*", count=batch):
                by_bucket[key[len(self.prefix):].partition("}")[0]].append(key)
            chunks = [keys[i:i + batch] for keys in by_bucket.values() for i in range(0, len(keys), batch)]

            async def fetch(pipe: Any) -> list[Any]:
                for chunk in chunks:
                    await self._script("get_with_ttl", chunk, [], pipe=pipe)
                return await pipe.execute()
            out = []
            for chunk, replies in zip(chunks, await self._pipelined(client, fetch), strict=True):
                for key, raw, ttl in zip(chunk, replies[::2], replies[1::2], strict=True):
                    if raw is not None and ttl != -2:
                        out.append((key.partition("}:sbx:")[2], raw, ttl))
            return out
        return await self._call("raw_records", run)

    async def pttl(self, sandbox_id: str) -> int:
        """Remaining TTL of a sandbox key in ms; -2 if absent."""
        return await self._call("pttl", lambda r: r.pttl(self.sandbox_key(sandbox_id)))

    async def node_ttls(self, node_ids: list[str]) -> dict[str, int]:
        """Remaining TTL of each node's key in ms (-2: absent, its node is dead); one round trip
        (one per master on a cluster)."""
        async def run(pipe: Any) -> list[int]:
            for node_id in node_ids:
                pipe.pttl(self.node_key(node_id))
            return await pipe.execute()
        if not node_ids:
            return {}
        return dict(zip(node_ids, await self._call("node_ttls", lambda c: self._pipelined(c, run)), strict=True))

    def pubsub(self) -> aioredis.client.PubSub | ShardedSubscriber:
        if self.cluster:
            return ShardedSubscriber(self._ensure_client(), self._target, CONNECT_TIMEOUT_S)
        return self._ensure_client().pubsub(ignore_subscribe_messages=True)

    async def server_time(self) -> float:
        seconds, micros = await self._call("server_time", lambda r: r.time())
        return seconds + micros / 1e6

    def _decode(self, cls: type[R], raw: str) -> R:
        try:
            return cls.from_json(raw)
        except ValueError as exc:
            raise UnreadableRecord(f"redis registry {self.safe_url}: unreadable {cls.__name__}: {exc}") from exc

"""Redis registry backend: one registry shared by many nodes and edge proxies.

Keys (prefix "netagent:", `?prefix=` in the URL overrides it):
  {prefix}sbx:{sandbox_id}    sandbox record JSON: a v2 record without expiry (served
                              while its node key lives), a tombstone with PX TTL
  {prefix}node:{node_id}      node record JSON, PX TTL (the heartbeat)
  {prefix}node:{node_id}:sbx  SET of the node's sandbox ids

The owner check plus seq compare-and-set, the heartbeat and the node listing are Lua scripts,
so each is atomic. The scripts touch keys built from the prefix, which is fine
on a standalone (or Sentinel-managed) Redis but not on Redis Cluster.

Short socket timeouts and no retries inside a call: an outage surfaces as a
RegistryError within about a second (two at worst: connect plus command); the
caller decides when to retry. The connection pool reconnects on the next call.
"""
from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .base import NodeIdInUse, Registry, RegistryError, UnreadableRecord
from .ownership import INSTANCE_LABEL, Verdict
from .records import NodeRecord, SandboxRecord

T = TypeVar("T")
R = TypeVar("R", SandboxRecord, NodeRecord)

DEFAULT_PREFIX = "netagent:"
CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 1.0

# KEYS: sandbox key, node set key.
# ARGV: record JSON, seq, ttl ms, "1" if tombstone, sandbox id, channel, node id, "1" if a claim,
#       "1" if the record lives while its node does (v2, not a tombstone: stored without expiry).
# The owner check plus seq rule of ownership.decide (returns its Verdict: 0 stale, 1 stored,
# 2 not the owner, 3 the stored record is of another schema version or malformed: never
# overwritten), and publishes what it stored ("<ttl ms>\n<record JSON>", ttl -1: none) on
# the change channel for edges.
PUT_SANDBOX_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if not ok or type(doc) ~= 'table' or (doc.v ~= 1 and doc.v ~= 2) or not tonumber(doc.seq) then
    return 3
  end
  if doc.node_id == ARGV[7] then
    if tonumber(doc.seq) >= tonumber(ARGV[2]) then return 0 end
  elseif ARGV[8] ~= '1' and doc.deleted ~= true then
    return 2
  end
end
local ttl = ARGV[3]
if ARGV[9] == '1' then
  ttl = '-1'
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
end
if ARGV[4] == '1' then
  redis.call('SREM', KEYS[2], ARGV[5])
else
  redis.call('SADD', KEYS[2], ARGV[5])
  if ARGV[9] == '1' then
    redis.call('PERSIST', KEYS[2])
  elseif redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
end
redis.call('PUBLISH', ARGV[6], ttl .. '\\n' .. ARGV[1])
return 1
"""

# KEYS: node key, node set key, then one sandbox key per id.
# ARGV: node JSON, ttl ms, node id, agent instance, then the ids.
# If a live node record of this id names another instance (ownership.node_id_taken),
# writes nothing and returns {-1, that record}; {-2, that record} if it is not a
# readable v1/v2 record (not ours to overwrite either). Otherwise extends the listed (v1)
# records still owned by this node and not tombstones, and returns {1} if the node record
# was missing (the agent then writes all its records again), else {0}.
REFRESH_LUA = """
local node = redis.call('GET', KEYS[1])
if node then
  local ok, doc = pcall(cjson.decode, node)
  if not ok or type(doc) ~= 'table' or (doc.v ~= 1 and doc.v ~= 2) then return {-2, node} end
  if ARGV[4] ~= '' and type(doc.extra) == 'table' and type(doc.extra.instance) == 'string'
     and doc.extra.instance ~= '' and doc.extra.instance ~= ARGV[4] then
    return {-1, node}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local extended = 0
for i = 3, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur then
    local ok, doc = pcall(cjson.decode, cur)
    if ok and type(doc) == 'table' and doc.node_id == ARGV[3] and doc.deleted ~= true then
      redis.call('PEXPIRE', KEYS[i], ARGV[2])
      redis.call('SADD', KEYS[2], ARGV[i + 2])
      extended = extended + 1
    end
  end
end
if extended > 0 and redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if node then return {0} end
return {1}
"""

# KEYS: node set key.  ARGV: sandbox key prefix, node id.
# Returns the live ids owned by the node and drops the others from the set.
NODE_SANDBOXES_LUA = """
local live = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local cur = redis.call('GET', ARGV[1] .. id)
  local owned = false
  if cur then
    local ok, doc = pcall(cjson.decode, cur)
    owned = ok and type(doc) == 'table' and doc.node_id == ARGV[2] and doc.deleted ~= true
  end
  if owned then table.insert(live, id) else redis.call('SREM', KEYS[1], id) end
end
return live
"""


# KEYS: sandbox keys.  Returns value, PTTL, value, PTTL, ... (a missing key: nil, -2).
GET_WITH_TTL_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('GET', key)
  out[2 * i] = redis.call('PTTL', key)
end
return out
"""


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


class RedisRegistry(Registry):
    def __init__(self, url: str) -> None:
        self.url = url
        self._redis_url, self.prefix, self.safe_url = split_url(url)
        self._client: aioredis.Redis | None = None

    def sandbox_key(self, sandbox_id: str) -> str:
        return f"{self.prefix}sbx:{sandbox_id}"

    def node_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def node_set_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:sbx"

    @property
    def change_channel(self) -> str:
        return f"{self.prefix}changes"

    def _ensure_client(self) -> aioredis.Redis:
        if self._client is None:
            client = aioredis.Redis.from_url(
                self._redis_url, decode_responses=True,
                socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0), retry_on_error=[])
            self._put_script = client.register_script(PUT_SANDBOX_LUA)
            self._refresh_script = client.register_script(REFRESH_LUA)
            self._node_sandboxes_script = client.register_script(NODE_SANDBOXES_LUA)
            self._get_with_ttl_script = client.register_script(GET_WITH_TTL_LUA)
            self._client = client
        return self._client

    async def _call(self, op: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        client = self._ensure_client()
        try:
            return await fn(client)
        except (RedisError, OSError) as exc:  # OSError covers TimeoutError too
            raise RegistryError(f"redis registry {self.safe_url}: {op} failed: "
                                f"{type(exc).__name__}: {exc}") from exc

    async def connect(self) -> None:
        """Creates the client and pings; the object stays usable if this fails."""
        await self._call("ping", lambda r: r.ping())

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _put_args(self, rec: SandboxRecord, ttl_s: float, claim: bool) -> tuple[list[str], list[Any]]:
        keys = [self.sandbox_key(rec.sandbox_id), self.node_set_key(rec.node_id)]
        args = [rec.to_json(), rec.seq, ttl_ms(ttl_s), "1" if rec.deleted else "0", rec.sandbox_id,
                self.change_channel, rec.node_id, "1" if claim else "0", "1" if rec.lives_with_node else "0"]
        return keys, args

    async def write_many(self, records: list[SandboxRecord], ttl_s: float,
                         claims: list[bool] | None = None) -> list[Verdict]:
        """One pipelined round trip for the batch (each write is still its own atomic script)."""
        flags = claims or [False] * len(records)

        async def run(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for rec, claim in zip(records, flags, strict=True):
                    keys, args = self._put_args(rec, ttl_s, claim)
                    await self._put_script(keys=keys, args=args, client=pipe)  # queued, not sent
                return await pipe.execute()
        return [Verdict(int(r)) for r in await self._call("write_many", run)]

    async def refresh(self, node: NodeRecord, sandbox_ids: list[str], ttl_s: float) -> bool:
        ids = list(dict.fromkeys(sandbox_ids))
        keys = [self.node_key(node.node_id), self.node_set_key(node.node_id), *map(self.sandbox_key, ids)]
        args = [node.to_json(), ttl_ms(ttl_s), node.node_id, str(node.extra.get(INSTANCE_LABEL, "")), *ids]
        result = await self._call("refresh", lambda r: self._refresh_script(keys=keys, args=args))
        if result[0] == -2:
            try:
                NodeRecord.from_json(result[1])
                reason: object = "not a v1 node record"
            except ValueError as exc:
                reason = exc
            raise NodeIdInUse.unreadable(node.node_id, reason)
        if result[0] == -1:
            raise NodeIdInUse.by(node, self._decode(NodeRecord, result[1]), await self.server_time())
        return bool(result[0] == 1)

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
        keys = [self.node_set_key(node_id)]
        args = [self.sandbox_key(""), node_id]
        ids = await self._call("node_sandboxes", lambda r: self._node_sandboxes_script(keys=keys, args=args))
        return sorted(ids)

    # -- for edges: a snapshot, then the change channel (docs/registry.md) --

    async def raw_records(self, batch: int = 1000) -> list[tuple[str, str, int]]:
        """(sandbox id, record JSON, remaining TTL in ms) of every sandbox key, tombstones
        too, undecoded (SCAN, then one script call per batch for values and TTLs)."""
        async def run(client: aioredis.Redis) -> list[tuple[str, str, int]]:
            out = []
            keys: list[str] = []
            async for key in client.scan_iter(match=self.sandbox_key("*"), count=batch):
                keys.append(key)
            for start in range(0, len(keys), batch):
                chunk = keys[start:start + batch]
                replies = await self._get_with_ttl_script(keys=chunk, client=client)
                for key, raw, ttl in zip(chunk, replies[::2], replies[1::2], strict=True):
                    if raw is not None and ttl != -2:
                        out.append((key[len(self.sandbox_key("")):], raw, ttl))
            return out
        return await self._call("raw_records", run)

    async def pttl(self, sandbox_id: str) -> int:
        """Remaining TTL of a sandbox key in ms; -2 if absent."""
        return await self._call("pttl", lambda r: r.pttl(self.sandbox_key(sandbox_id)))

    async def node_ttls(self, node_ids: list[str]) -> dict[str, int]:
        """Remaining TTL of each node's key in ms (-2: absent, its node is dead); one round trip."""
        async def run(client: aioredis.Redis) -> list[int]:
            async with client.pipeline(transaction=False) as pipe:
                for node_id in node_ids:
                    pipe.pttl(self.node_key(node_id))
                return await pipe.execute()
        return dict(zip(node_ids, await self._call("node_ttls", run), strict=True)) if node_ids else {}

    def pubsub(self) -> aioredis.client.PubSub:
        return self._ensure_client().pubsub(ignore_subscribe_messages=True)

    async def server_time(self) -> float:
        seconds, micros = await self._call("server_time", lambda r: r.time())
        return seconds + micros / 1e6

    def _decode(self, cls: type[R], raw: str) -> R:
        try:
            return cls.from_json(raw)
        except ValueError as exc:
            raise UnreadableRecord(f"redis registry {self.safe_url}: unreadable {cls.__name__}: {exc}") from exc

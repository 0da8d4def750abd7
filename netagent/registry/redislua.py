"""The Redis registry's Lua scripts (the write rule of ownership.py, the heartbeat,
the node listing, the edge's snapshot read). Key naming and calls: redis.py.
Each script touches keys of one hash-tag bucket, or the node key alone, so it
runs on Redis Cluster too."""
from __future__ import annotations

# KEYS: sandbox key, node set key (same bucket).
# ARGV: record JSON, seq, ttl ms, "1" if tombstone, sandbox id, channel, node id, "1" if a claim,
#       "1" if the record lives while its node does (v2, not a tombstone: stored without expiry),
#       PUBLISH or SPUBLISH (a cluster's sharded channel).
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
redis.call(ARGV[10], ARGV[6], ttl .. '\\n' .. ARGV[1])
return 1
"""

# KEYS: node key.  ARGV: node JSON, ttl ms, agent instance.
# If a live node record of this id names another instance (ownership.node_id_taken),
# writes nothing and returns {-1, that record}; {-2, that record} if it is not a
# readable v1/v2 record (not ours to overwrite either). Otherwise SETs the node record and
# returns {1} if it was missing (the agent then writes all its records again), else {0}.
# (Apart from REFRESH_LUA: the node record lives in its own slot.)
NODE_CLAIM_LUA = """
local node = redis.call('GET', KEYS[1])
if node then
  local ok, doc = pcall(cjson.decode, node)
  if not ok or type(doc) ~= 'table' or (doc.v ~= 1 and doc.v ~= 2) then return {-2, node} end
  if ARGV[3] ~= '' and type(doc.extra) == 'table' and type(doc.extra.instance) == 'string'
     and doc.extra.instance ~= '' and doc.extra.instance ~= ARGV[3] then
    return {-1, node}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if node then return {0} end
return {1}
"""

# KEYS: node set key of one bucket, then one sandbox key per id of that bucket.
# ARGV: ttl ms, node id, then the ids. (The node record is claimed first, by NODE_CLAIM_LUA.)
# Extends only the listed (v1) records still owned by this node and not tombstones. Returns how many were extended.
REFRESH_LUA = """
local extended = 0
for i = 2, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if cur then
    local ok, doc = pcall(cjson.decode, cur)
    if ok and type(doc) == 'table' and doc.node_id == ARGV[2] and doc.deleted ~= true then
      redis.call('PEXPIRE', KEYS[i], ARGV[1])
      redis.call('SADD', KEYS[1], ARGV[i + 1])
      extended = extended + 1
    end
  end
end
if extended > 0 and redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return extended
"""

# KEYS: node set key of one bucket.  ARGV: sandbox key prefix of that bucket, node id.
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


# KEYS: sandbox keys (of one bucket on a cluster).  Returns value, PTTL, value, PTTL, ... (a missing key: nil, -2).
GET_WITH_TTL_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('GET', key)
  out[2 * i] = redis.call('PTTL', key)
end
return out
"""


SCRIPTS = {"put": PUT_SANDBOX_LUA, "node_claim": NODE_CLAIM_LUA, "refresh": REFRESH_LUA,
           "node_sandboxes": NODE_SANDBOXES_LUA, "get_with_ttl": GET_WITH_TTL_LUA}

-- netagent's request interceptor (docs/architecture.md, "Request interception").
-- The agent pushes each sandbox's rules and the secrets they use through the
-- admin socket (`netagent set <src> <hex>`, `netagent del <src>`); they live in
-- this Lua state only, never in a file. One decision per request:
-- txn.na_action allow|deny|refuse, txn.na_rule, txn.na_transform yes|no|withheld.

local sandboxes = {}   -- source address -> { id, rules = {...}, secrets = {NAME = value} }

local function unhex(s)
  return (s:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

local function fields(line)
  local out = {}
  for f in (line .. "\t"):gmatch("([^\t]*)\t") do out[#out + 1] = f end
  return out
end

local function set_of(csv)
  local out = {}
  for v in csv:gmatch("[^,]+") do out[v] = true end
  return out
end

local function parse(text)
  local sb = { id = "", rules = {}, secrets = {} }
  local by_id = {}
  for line in text:gmatch("([^\n]*)\n") do
    local f = fields(line)
    if f[1] == "S" then
      sb.id = f[2]
    elseif f[1] == "R" then
      local r = { id = f[2], action = f[3], domain = f[4], ports = set_of(f[5]),
                  methods = f[6] ~= "*" and set_of(f[6]) or nil, kind = f[7], path = f[8],
                  plain_secrets = f[9] == "1", transforms = {} }
      sb.rules[#sb.rules + 1] = r
      by_id[r.id] = r
    elseif f[1] == "T" then
      local r = by_id[f[2]]
      r.transforms[#r.transforms + 1] = { op = f[3], header = f[4], value = f[5] }
    elseif f[1] == "K" then
      sb.secrets[f[2]] = f[3]
    end
  end
  return sb
end

core.register_cli({"netagent", "set"}, "netagent set <src> <hex>: one sandbox's rules and secrets",
  function(applet, _, _, src, hex)
    if not src or not hex or #hex % 2 ~= 0 then
      applet:send("error: usage netagent set <src> <hex>\n")
      return
    end
    sandboxes[src] = parse(unhex(hex))
    applet:send("ok\n")
  end)

core.register_cli({"netagent", "del"}, "netagent del <src>: forget one sandbox",
  function(applet, _, _, src)
    sandboxes[src or ""] = nil
    applet:send("ok\n")
  end)

core.register_cli({"netagent", "count"}, "netagent count: sandboxes loaded",
  function(applet)
    local n = 0
    for _ in pairs(sandboxes) do n = n + 1 end
    applet:send(tostring(n) .. "\n")
  end)

local function domain_matches(name, domain)
  if domain:sub(1, 2) == "*." then
    local head, tail = name:match("^([^.]+)%.(.+)$")
    return head ~= nil and tail == domain:sub(3)
  end
  return name == domain
end

local function path_matches(r, path)
  if r.kind == "g" then return path:match(r.path) ~= nil end
  return path:sub(1, #r.path) == r.path
end

local function host_of(txn)
  local host = txn.f:req_hdr("host") or ""
  return (host:lower():gsub(":%d+$", ""):gsub("%.$", ""))
end

local function fill(value, secrets)
  local missing = false
  local out = value:gsub("%${secret:([%w_]+)}", function(name)
    local v = secrets[name]
    if v == nil then missing = true; return "" end
    return v
  end)
  return out, missing
end

core.register_action("netagent_decide", {"http-req"}, function(txn)
  local tls = txn.f:ssl_fc() == 1
  local src = txn.f:src()
  local port = txn.f:dst_port()
  local method = txn.f:method()
  local path = txn.f:path() or "/"
  local host = host_of(txn)
  local name = host
  if tls then name = (txn.f:ssl_fc_sni() or ""):lower() end
  txn:set_var("txn.na_host", name)
  txn:set_var("txn.na_rule", "-")
  txn:set_var("txn.na_transform", "no")
  local sb = sandboxes[src]
  if sb == nil then
    txn:set_var("txn.na_action", "refuse")
    txn:set_var("txn.na_reason", "no request rules for this source")
    return
  end
  txn:set_var("txn.na_sandbox", sb.id)
  local ruled = false
  local rule = nil
  for _, r in ipairs(sb.rules) do
    if r.ports[tostring(port)] and domain_matches(name, r.domain) then
      ruled = true
      if (r.methods == nil or r.methods[method]) and path_matches(r, path) then
        rule = r
        break
      end
    end
  end
  if not ruled then
    -- an address admitted for a ruled name, reached with another name: refused,
    -- since the kernel's own checks of that name were bypassed by the redirect
    txn:set_var("txn.na_action", "refuse")
    txn:set_var("txn.na_reason", "name has no request rules on this port")
    return
  end
  if rule == nil then
    txn:set_var("txn.na_action", "allow")
    return
  end
  txn:set_var("txn.na_rule", rule.id)
  txn:set_var("txn.na_action", rule.action)
  if rule.action ~= "allow" or #rule.transforms == 0 then return end
  -- identity: over TLS the name the upstream must prove is the SNI; a Host
  -- naming anything else gets no transform. Plain HTTP proves nothing.
  local bound = (tls and host == name) or (not tls and rule.plain_secrets)
  local http = txn.http
  local applied = false
  for _, t in ipairs(rule.transforms) do
    local uses_secret = t.value:find("${secret:", 1, true) ~= nil
    if uses_secret and not bound then
      txn:set_var("txn.na_transform", "withheld")
    elseif t.op == "remove" then
      http:req_del_header(t.header)
      applied = true
    else
      local value, missing = fill(t.value, sb.secrets)
      if missing then
        txn:set_var("txn.na_action", "refuse")
        txn:set_var("txn.na_reason", "a secret of this rule is not loaded")
        return
      end
      if t.op == "set" or txn.f:req_hdr(t.header) ~= nil then
        http:req_set_header(t.header, value)
        applied = true
      end
    end
  end
  if applied and txn:get_var("txn.na_transform") == "no" then txn:set_var("txn.na_transform", "yes") end
end)

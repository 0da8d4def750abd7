-- Wake on request (docs/edge.md, "Paused sandboxes"): a paused sandbox's request is
-- held here while the control plane's waker has the orchestrator resume it. The
-- waker answers one line: "LIVE <route>" (the port's map value once the sandbox is
-- live, possibly on another node) or "FAIL <status> <message>". On LIVE the request
-- goes on through HAProxy's own rules to the guest, as any other request (HTTP/2,
-- gRPC and WebSocket included); on FAIL the shard's rules answer with the status.

local HOLD_S = 300   -- the waker answers within --wake-timeout; this only bounds a waker that hangs

core.register_action("netagent_wake", { "http-req" }, function(txn, host, port)
    local sid, sport = txn:get_var("txn.sid"), txn:get_var("txn.port")
    local sock = core.tcp()
    sock:settimeout(HOLD_S)
    local line
    if sock:connect(host, tonumber(port)) then
        if sock:send("WAKE " .. sid .. " " .. sport .. "\n") then
            line = sock:receive("*l")
        end
    end
    sock:close()
    local route = line and line:match("^LIVE (.+)$")
    if route then
        txn:set_var("txn.known", "1")
        txn:set_var("txn.route", route)
        return
    end
    local status, message = (line or ""):match("^FAIL (%d%d%d) (.*)$")
    if not status then
        status, message = "503", "sandbox " .. sid .. " is paused and the edge's waker did not answer"
    end
    txn:set_var("txn.wake_status", status)
    txn:set_var("txn.wake_msg", message)
end, 2)

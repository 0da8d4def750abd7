"""An agent in its own process, driven by JSON lines on stdin (tests only).

`python -m tests.testbed.agent_proc '<config json>'` prints {"ready": ...} once
started, then answers each {"op": "allocate", "args": {...}} line with
{"ok": result} or {"error": code, "message": ...}, one line at a time, in
order. The op "slot_table" answers the agent's whole slot table
({index: state}), "events" the retained events of one type, "usage" the
usage totals as plain dicts. Tests kill -9 it at will.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys

from netagent.agent import Agent
from netagent.config import Config
from netagent.errors import NetagentError


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    agent = Agent(Config.model_validate_json(sys.argv[1]))
    await agent.start()
    await agent.wait_pool_ready()
    print(json.dumps({"ready": agent.stats["last_reconcile"]}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        req = json.loads(line)
        try:
            if req["op"] == "slot_table":
                result = {str(i): str(state) for i, state in sorted(agent.slots.items())}
            elif req["op"] == "events":   # every retained event of one type
                result = [{"sandbox_id": sid, "data": json.loads(data)} for _, _, t, sid, data
                          in agent.store.events_after(0, 100_000) if t == req["args"]["type"]]
            elif req["op"] == "usage":    # totals as plain dicts
                totals = await agent.usage(**req.get("args", {}))
                result = {sid: counts.as_dict() for sid, counts in totals.items()}
            else:
                result = await getattr(agent, req["op"])(**req.get("args", {}))
            if hasattr(result, "model_dump"):
                result = result.model_dump(mode="json")
            elif isinstance(result, list) and result and hasattr(result[0], "model_dump"):
                result = [r.model_dump(mode="json") for r in result]
            print(json.dumps({"ok": result}), flush=True)
        except NetagentError as exc:
            print(json.dumps({"error": exc.code, "message": str(exc)}), flush=True)
    await agent.stop()


if __name__ == "__main__":
    asyncio.run(main())

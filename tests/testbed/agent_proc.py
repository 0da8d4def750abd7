"""An agent in its own process, driven by JSON lines on stdin (tests only).

`python -m tests.testbed.agent_proc '<config json>'` prints {"ready": ...} once
started, then answers each {"op": "allocate", "args": {...}} line with
{"ok": result} or {"error": code, "message": ...}, one line at a time, in
order. The op "slot_table" answers the agent's whole slot table
({index: state}). Tests kill -9 it at will.
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
            else:
                result = await getattr(agent, req["op"])(**req.get("args", {}))
            if hasattr(result, "model_dump"):
                result = result.model_dump(mode="json")
            elif isinstance(result, list):
                result = [r.model_dump(mode="json") for r in result]
            print(json.dumps({"ok": result}), flush=True)
        except NetagentError as exc:
            print(json.dumps({"error": exc.code, "message": str(exc)}), flush=True)
    await agent.stop()


if __name__ == "__main__":
    asyncio.run(main())

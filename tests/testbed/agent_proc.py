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
import signal
import subprocess
import sys

from netagent.agent import Agent
from netagent.config import Config
from netagent.errors import NetagentError
from tests.testbed import sh


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


class AgentProcess:
    """The agent in its own process, so it can be killed for real. It answers
    requests one at a time, in order (tests/testbed/agent_proc.py)."""

    def __init__(self, config_json: str):
        self.proc = subprocess.Popen([sh.PYTHON, "-m", "tests.testbed.agent_proc", config_json], cwd=sh.REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, "agent process died during start"
        self.reconcile = json.loads(line)["ready"]

    def send(self, op: str, **args) -> None:
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.proc.stdin.flush()

    def request(self, op: str, **args) -> dict:
        """The raw reply: {"ok": ...} or {"error": ..., "message": ...}."""
        self.send(op, **args)
        line = self.proc.stdout.readline()
        assert line, f"agent process died during {op}"
        return json.loads(line)

    def call(self, op: str, **args):
        reply = self.request(op, **args)
        assert "ok" in reply, reply
        return reply["ok"]

    def kill9(self) -> list[dict]:
        """SIGKILL; asserts that is what ended the process. Returns the replies
        written before it died that nobody had read."""
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL, f"agent exited with {self.proc.returncode}, not by SIGKILL"
        return [json.loads(line) for line in self.proc.stdout.read().splitlines() if line.endswith("}")]


if __name__ == "__main__":
    asyncio.run(main())

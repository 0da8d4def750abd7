"""The orchestrator's figures (issue 15 item 4): every allocate figure of
`make bench` over gRPC from another process, next to the in-process figure,
on the same agent in the same run, the two sides interleaved round by round
so the machine's load hits both alike.

Used by tests/bench/run.py (`bench_grpc`); the client is one long-lived
process driven by JSON lines on its stdin, so no process start sits in a
figure.
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from netagent.agent import Agent
from netagent.config import PoolConfig
from tests.bench.run import summary

CLIENT = r"""
import json, sys, time
from netagent.api import netagent_pb2 as pb
from netagent.client import Client
c = Client(socket_path=sys.argv[1], timeout=60)
c.host_info()
print("[]", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    ids = [f"{cmd['tag']}-{k}" for k in range(cmd["n"])]
    out = []
    if cmd["op"] == "warm":        # allocate + release cycles; the allocate is timed
        for sid in ids:
            t0 = time.perf_counter(); c.allocate(sid); out.append((time.perf_counter() - t0) * 1e3)
            c.release(sid)
    elif cmd["op"] == "burst":     # back-to-back allocates, each timed
        for sid in ids:
            t0 = time.perf_counter(); c.allocate(sid); out.append((time.perf_counter() - t0) * 1e3)
    elif cmd["op"] == "concurrent":  # all in flight at once; the wall time until the last answer
        t0 = time.perf_counter()
        futures = [c.stub.Allocate.future(pb.AllocateRequest(sandbox_id=s), timeout=60) for s in ids]
        for f in futures:
            f.result()
        out.append((time.perf_counter() - t0) * 1e3)
    elif cmd["op"] == "release":
        for sid in ids:
            c.release(sid)
    print(json.dumps(out), flush=True)
"""


class GrpcClient:
    """The client process (unix socket, another process, like an orchestrator)."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    @classmethod
    async def start(cls, socket_path: Path) -> GrpcClient:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(socket_path),
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        client = cls(proc)
        await client._reply()
        return client

    async def _reply(self) -> list[float]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the gRPC client exited ({await self.proc.wait()})")
        return list(json.loads(line))

    async def run(self, op: str, tag: str, n: int) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "tag": tag, "n": n}).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._reply()

    async def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        await self.proc.wait()


async def in_process(agent: Agent, op: str, tag: str, n: int) -> list[float]:
    """The same operations as the client's, called on the agent directly."""
    ids = [f"{tag}-{k}" for k in range(n)]
    out: list[float] = []
    if op == "concurrent":
        t0 = time.perf_counter()
        await asyncio.gather(*(agent.allocate(s) for s in ids))
        return [(time.perf_counter() - t0) * 1e3]
    for sid in ids:
        t0 = time.perf_counter()
        await agent.allocate(sid)
        out.append((time.perf_counter() - t0) * 1e3)
        if op == "warm":
            await agent.release(sid)
    return out


async def release_all(agent: Agent, tag: str, n: int) -> None:
    for k in range(n):
        await agent.release(f"{tag}-{k}")


async def settled(agent: Agent, timeout: float = 900) -> None:
    """The pool at its depth, no build in flight, every released slot cleaned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        free = agent.plan.capacity - len(agent.allocations)
        if (len(agent.ready) == min(agent.pool.target(), free) and not agent._building
                and not any(s.value == "dirty" for s in agent.slots.values())):
            await asyncio.sleep(0.3)
            return
        await asyncio.sleep(0.05)
    dirty = sum(1 for s in agent.slots.values() if s.value == "dirty")
    raise TimeoutError(f"pool did not settle in {timeout:.0f} s: {len(agent.ready)} ready of {agent.pool.target()}, "
                       f"{agent._building} building, {dirty} dirty")


async def interleaved(agent: Agent, client: GrpcClient, op: str, rounds: int, n: int) -> dict[str, Any]:
    """`rounds` rounds of `op` (n calls), in-process and over gRPC in turn,
    the order swapped every round; each round's calls are released after it."""
    times: dict[str, list[float]] = {"in_process": [], "grpc": []}
    per_round_p50: dict[str, list[float]] = {"in_process": [], "grpc": []}
    for r in range(rounds):
        for side in (("in_process", "grpc") if r % 2 == 0 else ("grpc", "in_process")):
            await settled(agent)
            tag = f"{op}-{side.replace('_', '')}-{r}"
            xs = await (client.run(op, tag, n) if side == "grpc" else in_process(agent, op, tag, n))
            times[side] += xs
            per_round_p50[side].append(statistics.median(xs))
            if op != "warm":
                await release_all(agent, tag, n)
    out: dict[str, Any] = {side: summary(xs) for side, xs in times.items()}
    added = [g - i for g, i in zip(per_round_p50["grpc"], per_round_p50["in_process"], strict=True)]
    out["added_p50_ms"] = round(out["grpc"]["p50"] - out["in_process"]["p50"], 3)
    out["added_per_round_ms"] = {"median": round(statistics.median(added), 3),
                                 "min": round(min(added), 3), "max": round(max(added), 3)}
    return out


async def burst_policies(agent: Agent, client: GrpcClient, rounds: int, n: int) -> dict[str, Any]:
    """A burst of n back-to-back Allocates over gRPC with the default [pool]
    config (`adaptive`) against the same with a fixed pool (`fixed`:
    max_size 0, the behaviour before the pool followed demand), interleaved;
    both see the same demand history (the previous rounds' bursts)."""
    default = PoolConfig()
    policies = {"fixed": agent.config.replace(pool_size=default.size, pool_max_size=0),
                "adaptive": agent.config.replace(pool_size=default.size, pool_max_size=default.max_size,
                                                 pool_demand_window_s=default.demand_window_s)}
    times: dict[str, list[float]] = {k: [] for k in policies}
    rounds_out: dict[str, list[dict[str, float]]] = {k: [] for k in policies}
    for r in range(rounds):
        for name in (("fixed", "adaptive") if r % 2 == 0 else ("adaptive", "fixed")):
            agent.reconfigure(policies[name])
            await settled(agent)
            depth = len(agent.ready)
            xs = await client.run("burst", f"burst-{name}-{r}", n)
            times[name] += xs
            rounds_out[name].append({"warm_at_start": depth, **summary(xs)})
            await release_all(agent, f"burst-{name}-{r}", n)
    return {name: {"all": summary(xs), "rounds": rounds_out[name]} for name, xs in times.items()}


async def bench_grpc(agent: Agent, state: Path, samples: int, burst_rounds: int = 4) -> dict[str, Any]:
    """Serve the agent's gRPC API on a unix socket (as `netagent serve` does)
    and measure the allocate figures over it next to the in-process ones."""
    from netagent.api.server import ApiServer
    saved = agent.config
    agent.reconfigure(agent.config.replace(api_socket=state / "bench.sock", pool_size=len(agent.ready),
                                           pool_max_size=0))
    api = ApiServer(agent, agent.config)
    await api.start()
    client = await GrpcClient.start(state / "bench.sock")
    try:
        out: dict[str, Any] = {"load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
        out["warm_allocate_ms"] = await interleaved(agent, client, "warm", 10, max(1, samples // 10))
        out["concurrent_50_total_ms"] = await interleaved(agent, client, "concurrent", 6, 50)
        out["burst_200_default_pool_ms"] = await burst_policies(agent, client, burst_rounds, 200)
        out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        await client.stop()
        await api.stop(0)
        agent.reconfigure(saved.replace(pool_size=len(agent.ready), pool_max_size=0))  # no refill after
    return out

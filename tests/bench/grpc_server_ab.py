"""gRPC server A/B (issue 25 item 3): grpc.aio (the agent's server) against
grpcio's sync server with a thread pool (grpc_threads_server.py), on the same
unix socket path, the same agent, in the same run, next to the in-process figure.

Each round runs every side in turn (the order rotates each round): a side
starts its server, a fresh client process connects, does `--warm` timed
allocate+release cycles (concurrency 1) and one burst of 50 concurrent
allocates (wall time to the last answer), and the server stops. Variants are
a server kind plus grpc server options, so a cheap win is measured alone:

    python -m tests.bench.grpc_server_ab --existing 10 --rounds 6 --warm 40 \
        [--variants aio,threads,aio+latency]

Prints JSON: per side, the warm allocate summary, the per-round p50s, the
concurrent-50 totals, and the load average at the start and end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from netagent.agent import Agent
from netagent.api import server as server_mod
from netagent.config import Config
from tests.bench.grpc_bench import GrpcClient, in_process, release_all, settled
from tests.bench.grpc_threads_server import ThreadsApiServer
from tests.bench.run import fill, settle, summary
from tests.testbed.bed import Testbed

# name -> (server kind, extra grpc server options)
VARIANTS: dict[str, tuple[str, list[tuple[str, Any]]]] = {
    "aio": ("aio", []),
    "threads": ("threads", []),
    "aio+latency": ("aio", [("grpc.optimization_target", "latency")]),
    "threads+latency": ("threads", [("grpc.optimization_target", "latency")]),
}


async def one_side(agent: Agent, variant: str, sock: Path, tag: str, warm: int, concurrent: int) -> dict[str, Any]:
    """Warm cycles and one concurrent burst through `variant` (or in-process)."""
    await settled(agent)
    if variant == "in_process":
        w = await in_process(agent, "warm", f"{tag}-w", warm)
        await settled(agent)
        c = await in_process(agent, "concurrent", f"{tag}-c", concurrent)
        await release_all(agent, f"{tag}-c", concurrent)
        return {"warm": w, "concurrent": c}
    kind, options = VARIANTS[variant]
    api: Any
    if kind == "threads":
        api = ThreadsApiServer(agent, str(sock), server_mod.SERVER_OPTIONS + options)
    else:
        saved = server_mod.SERVER_OPTIONS
        server_mod.SERVER_OPTIONS = saved + options
        try:
            api = server_mod.ApiServer(agent, agent.config.replace(api_socket=sock))
        finally:
            server_mod.SERVER_OPTIONS = saved
    await api.start()
    client = await GrpcClient.start(sock)
    try:
        w = await client.run("warm", f"{tag}-w", warm)
        await settled(agent)
        c = await client.run("concurrent", f"{tag}-c", concurrent)
        await release_all(agent, f"{tag}-c", concurrent)
        return {"warm": w, "concurrent": c}
    finally:
        await client.stop()
        await api.stop(0)


async def ab(bed: Testbed, state: Path, existing: int, rounds: int, warm: int, concurrent: int,
             variants: list[str]) -> dict[str, Any]:
    agent = Agent(Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=state,
                         pool_size=existing + concurrent + 20, pool_build_concurrency=2))
    await agent.start()
    try:
        await agent.wait_pool_ready(timeout=900)
        await fill(agent, existing)
        await settle(agent)
        sides = ["in_process", *variants]
        warm_ms: dict[str, list[float]] = {s: [] for s in sides}
        round_p50: dict[str, list[float]] = {s: [] for s in sides}
        conc_ms: dict[str, list[float]] = {s: [] for s in sides}
        out: dict[str, Any] = {"existing": existing, "rounds": rounds, "warm_per_round": warm,
                               "concurrent": concurrent, "load_average_at_start": os.getloadavg()}
        for r in range(rounds):
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for side in order:
                tag = f"{side.replace('+', '').replace('_', '')}-{r}"
                got = await one_side(agent, side, state / "ab.sock", tag, warm, concurrent)
                warm_ms[side] += got["warm"]
                round_p50[side].append(round(statistics.median(got["warm"]), 3))
                conc_ms[side] += got["concurrent"]
        out["load_average_at_end"] = os.getloadavg()
        out["warm_allocate_ms"] = {s: {**summary(warm_ms[s]), "round_p50s": round_p50[s]} for s in sides}
        out["concurrent_total_ms"] = {s: summary(conc_ms[s]) for s in sides}
        base = out["warm_allocate_ms"]["in_process"]["p50"]
        out["added_p50_ms"] = {s: round(out["warm_allocate_ms"][s]["p50"] - base, 3) for s in variants}
        return out
    finally:
        await agent.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--existing", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--warm", type=int, default=40, help="timed allocate+release cycles per side per round")
    ap.add_argument("--concurrent", type=int, default=50)
    ap.add_argument("--variants", default="aio,threads", help=f"comma list of {', '.join(VARIANTS)}")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants: {unknown}")
    bed = Testbed().create()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            result = asyncio.run(ab(bed, Path(tmp), args.existing, args.rounds, args.warm, args.concurrent,
                                    variants))
            result["seconds"] = round(time.time() - t0, 1)
    finally:
        bed.destroy()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Latency tracer for a benchmark's daemon (`churn_bench --trace DIR`): loaded
by Python at start-up when this directory is on PYTHONPATH, active only in
`netagent serve` with LATENCY_TRACE set to the output file. It records, in
CLOCK_MONOTONIC seconds (the client's clock too):

- every Allocate: the gRPC handler's time, the core call's (run_allocate),
  the committer submit's;
- every commit: its operations and phases (plan under the db lock, the nft
  transaction on the host thread, the SQLite commit, the after-commit hooks);
- event-loop callbacks over 3 ms (what held the loop);
- worker-thread calls over 3 ms, or that waited over 3 ms for their thread;
- cyclic GC collections over 1 ms (generation, objects collected), whichever
  thread ran them: a collection stops every thread that wants the GIL.

Written as JSON lines when the daemon exits; tests/bench/trace_report.py
reads them. Measuring costs a few us a call: compare traced runs with traced runs.
Not an env var with the NETAGENT_ prefix: the daemon's settings take those.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import time
from typing import Any

PATH = os.environ.get("LATENCY_TRACE")
THRESHOLD_S = 0.003
EVENTS: list[dict[str, Any]] = []


def record(**fields: Any) -> None:
    EVENTS.append(fields)


def dump() -> None:
    with open(PATH or os.devnull, "w") as f:
        for event in EVENTS:
            f.write(json.dumps(event) + "\n")


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def trace_loop() -> None:
    import asyncio.events

    run = asyncio.events.Handle._run

    def timed(self: Any) -> None:
        t0 = time.perf_counter()
        run(self)
        took = time.perf_counter() - t0
        if took > THRESHOLD_S:
            callback = getattr(self, "_callback", None)
            name = repr(callback)[:120]
            try:
                name = callback.__self__.get_coro().__qualname__   # a task's step: its coroutine
            except AttributeError:
                pass
            record(k="loop", t=t0, ms=ms(took), cb=name)
    asyncio.events.Handle._run = timed   # type: ignore[method-assign]


def trace_workers() -> None:
    from netagent import workers

    call = workers._Executor.call

    async def timed_call(self: Any, fn: Any, *args: Any) -> Any:
        queued = time.perf_counter()

        def timed(*a: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a)
            finally:
                end = time.perf_counter()
                if end - start > THRESHOLD_S or start - queued > THRESHOLD_S:
                    record(k="thr", thr=self.pool._thread_name_prefix, t=start, wait_ms=ms(start - queued),
                           ms=ms(end - start), fn=getattr(fn, "__qualname__", repr(fn))[:100])
        return await call(self, timed, *args)
    workers._Executor.call = timed_call   # type: ignore[method-assign]


def trace_commits() -> None:
    from netagent.core import committer

    commit, submit = committer.Committer.commit, committer.Committer.submit

    async def timed_commit(self: Any, batch: Any) -> None:
        t0 = time.perf_counter()
        phases: dict[str, float] = {}
        apply_nft, after_commit = self.apply_nft, self.after_commit

        async def nft(burst: Any) -> None:
            phases["plan"] = time.perf_counter() - t0
            start = time.perf_counter()
            await apply_nft(burst)
            phases["nft_end"] = time.perf_counter()
            phases["nft"] = phases["nft_end"] - start

        async def after(done: Any) -> None:
            phases["db"] = time.perf_counter() - phases.get("nft_end", t0)
            start = time.perf_counter()
            await after_commit(done)
            phases["after"] = time.perf_counter() - start
        self.apply_nft, self.after_commit = nft, after
        try:
            await commit(self, batch)
        finally:
            self.apply_nft, self.after_commit = apply_nft, after_commit
        phases.pop("nft_end", None)
        record(k="commit", t=t0, ms=ms(time.perf_counter() - t0),
               ops=[(type(q.op).__name__, getattr(q.op, "sandbox_id", None)) for q in batch],
               ph={name: ms(s) for name, s in phases.items()})

    async def timed_submit(self: Any, op: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await submit(self, op)
        finally:
            if type(op).__name__ == "Allocate":
                record(k="submit", t=t0, ms=ms(time.perf_counter() - t0), sid=op.sandbox_id)
    committer.Committer.commit = timed_commit   # type: ignore[method-assign]
    committer.Committer.submit = timed_submit   # type: ignore[method-assign]


def trace_allocate() -> None:
    from netagent.api import service
    from netagent.core import api

    handler, core = service.NetAgentService.Allocate, api.CoreApi.run_allocate

    async def timed_handler(self: Any, request: Any, context: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await handler(self, request, context)
        finally:
            record(k="handler", t=t0, ms=ms(time.perf_counter() - t0), sid=request.sandbox_id)

    async def timed_core(self: Any, op: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await core(self, op)
        finally:
            record(k="core", t=t0, ms=ms(time.perf_counter() - t0), sid=op.sandbox_id)
    service.NetAgentService.Allocate = timed_handler   # type: ignore[method-assign]
    api.CoreApi.run_allocate = timed_core   # type: ignore[method-assign]


def trace_gc() -> None:
    import gc

    started: dict[str, float] = {}

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started["t"] = time.perf_counter()
        elif "t" in started and (took := time.perf_counter() - started.pop("t")) > 0.001:
            record(k="gc", t=time.perf_counter() - took, ms=ms(took), gen=info["generation"],
                   collected=info["collected"])
    gc.callbacks.append(callback)


if PATH and "serve" in sys.argv:
    trace_gc()
    trace_loop()
    trace_workers()
    trace_commits()
    trace_allocate()
    atexit.register(dump)

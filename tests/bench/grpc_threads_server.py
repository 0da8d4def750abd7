"""The "threads" side of tests/bench/grpc_server_ab.py: the agent's async
servicers (netagent/api/service.py, intercept_service.py) behind grpcio's
synchronous server with a thread pool, on a unix socket.

Measured against grpc.aio (docs/history/performance-log.md, "The gRPC server
path"), it was no faster, and its WatchEvents does not hold a slow consumer
back (the sync server's sends complete into grpc's buffers: a consumer that
read nothing was sent 10,550 events before the drop, against a few dozen),
so the agent keeps grpc.aio and this stays a bench variant.

A call arrives on one of the server's threads, which hands the servicer's
coroutine to the agent's event loop (run_coroutine_threadsafe) and waits for
its answer; the agent's state is touched only on the loop, as with grpc.aio.
A streaming call (WatchEvents) runs its async generator on the loop one item
at a time, so a slow reader holds back only its own thread.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from netagent.agent import Agent
from netagent.api import netagent_pb2_grpc as pb_grpc
from netagent.api.intercept_service import InterceptionService
from netagent.api.service import NetAgentService


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(code, details)
        self.code, self.details = code, details


class LoopContext:
    """What the async servicers use of a grpc.aio context, over a sync one:
    `abort` is awaited on the loop, so it raises there and the call's thread
    aborts the real context (grpc's sync abort must run on that thread)."""

    def __init__(self, context: grpc.ServicerContext):
        self._context = context

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()  # type: ignore[no-any-return]

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Abort(code, details)

    def __getattr__(self, name: str) -> Any:   # peer(), invocation_metadata(), ...
        return getattr(self._context, name)


class OnLoop:
    """A servicer whose methods are the async servicer's, run on `loop`."""

    def __init__(self, servicer: Any, loop: asyncio.AbstractEventLoop):
        self._servicer = servicer
        self._loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._servicer, name)
        wrapped = _stream(method, self._loop) if inspect.isasyncgenfunction(method) else _unary(method, self._loop)
        setattr(self, name, wrapped)   # built once per method
        return wrapped


def _unary(method: Callable[..., Any], loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        future = asyncio.run_coroutine_threadsafe(method(request, LoopContext(context)), loop)
        # A caller gone: cancel the handler as grpc.aio would (the core call is shielded)
        context.add_callback(future.cancel)
        try:
            return future.result()
        except _Abort as abort:
            context.abort(abort.code, abort.details)
        except concurrent.futures.CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "cancelled")
    return handler


def _stream(method: Callable[..., Any], loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        items = method(request, LoopContext(context))
        current: list[concurrent.futures.Future[Any]] = []
        ended = threading.Event()

        def on_end() -> None:   # the caller left or the server stops: wake the waiting thread
            ended.set()
            for future in current:
                future.cancel()
        context.add_callback(on_end)
        try:
            while not ended.is_set():
                future = asyncio.run_coroutine_threadsafe(items.__anext__(), loop)
                current[:] = [future]
                if ended.is_set():
                    future.cancel()
                try:
                    item = future.result()
                except (StopAsyncIteration, concurrent.futures.CancelledError):
                    return
                except _Abort as abort:
                    context.abort(abort.code, abort.details)
                yield item
        finally:
            asyncio.run_coroutine_threadsafe(items.aclose(), loop)
    return handler


class ThreadsApiServer:
    """ApiServer's unix-socket part (no TLS, no reflection) on the sync server."""

    def __init__(self, agent: Agent, socket_path: str, options: list[tuple[str, Any]], threads: int = 16):
        loop = asyncio.get_running_loop()
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="bench-api"),
                                  options=options)
        service = NetAgentService(agent)
        pb_grpc.add_NetAgentServicer_to_server(OnLoop(service, loop), self.server)
        pb_grpc.add_InterceptionServicer_to_server(OnLoop(InterceptionService(agent, service), loop), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), self.server)
        self.server.add_insecure_port(f"unix:{socket_path}")

    async def start(self) -> None:
        self.server.start()

    async def stop(self, grace_s: float) -> None:
        # its calls wait on the loop: wait for the stop off it
        await asyncio.get_running_loop().run_in_executor(None, self.server.stop(grace_s).wait)

"""The waker: paused sandboxes with wake on request (docs/edge.md, "Paused sandboxes").

HAProxy holds such a request in `wake.lua`, which sends the waker one line,
`WAKE {sandboxId} {port}`. The waker calls the orchestrator's resume hook once per
sandbox (concurrent requests share the call) and answers when the control plane's
mirror of the registry says the sandbox is live again (within `limit_s`), with
`LIVE {route}`: the port's map value, so HAProxy routes the request itself and the
guest answers it, whatever the protocol. Past the limit, or when the hook says no:
`FAIL {status} {message}`, which HAProxy answers with Retry-After. One task per
sandbox: a slow or failing hook holds only that one.

It listens on loopback for HAProxy only.
"""
from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping

from .maps import LIVE
from .wakehook import ResumeHook

log = logging.getLogger("netagent.edge")

POLL_S = 0.005            # how often a waiting sandbox's mirror entry is looked at
FAIL_HOLD_S = 2.0         # a refused wake answers the requests of the next 2 s without a new hook call
LINE_TIMEOUT_S = 10.0

Lookup = Callable[[str], Mapping[str, str] | None]   # sandbox id -> its map entries (the mirror)


class WakeFailed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Waker:
    def __init__(self, lookup: Lookup, hook: ResumeHook, limit_s: float = 30.0) -> None:
        self.lookup = lookup
        self.hook = hook
        self.limit_s = limit_s
        self.hook_calls = 0
        self.waiting = 0          # requests held now
        self._episodes: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._client, host, port, backlog=4096)
        return self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks) + list(self._episodes.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._episodes.values(), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ---- waking ------------------------------------------------------------

    def _live(self, sid: str) -> bool:
        entries = self.lookup(sid)
        return bool(entries) and entries.get(sid) == LIVE  # type: ignore[union-attr]

    async def wait_live(self, sid: str, port: int) -> str:
        """The port's map value once the sandbox is live; raises WakeFailed."""
        if not self._live(sid):
            loop = asyncio.get_running_loop()
            episode = self._episodes.get(sid)
            if episode is None or (episode.done() and loop.time() - self._failed_at.get(sid, 0.0) > FAIL_HOLD_S):
                episode = self._track(asyncio.create_task(self._episode(sid, port)))
                self._episodes[sid] = episode
            await asyncio.shield(episode)
        return self._route(sid, port)

    async def _episode(self, sid: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limit_s
        self.hook_calls += 1
        hook = self._track(asyncio.create_task(self.hook.call(sid, port)))
        try:
            while not self._live(sid):
                if loop.time() >= deadline:      # first: the hook's own timeout starts later, ends later
                    raise WakeFailed(503, f"sandbox {sid} is paused and did not resume within {self.limit_s:g} s")
                if hook.done() and hook.exception() is not None:
                    raise WakeFailed(503, f"sandbox {sid} is paused and could not be resumed ({hook.exception()})")
                await asyncio.sleep(POLL_S)
        except WakeFailed as exc:
            self._failed_at[sid] = loop.time()
            me = asyncio.current_task()
            loop.call_later(FAIL_HOLD_S, self._forget, sid, me)   # a long-running edge keeps no old failures
            log.warning("edge: %s", exc)
            raise
        self._failed_at.pop(sid, None)
        self._episodes.pop(sid, None)      # its waiters hold the task itself

    def _forget(self, sid: str, episode: asyncio.Task | None) -> None:
        if self._episodes.get(sid) is episode:
            del self._episodes[sid]
            self._failed_at.pop(sid, None)

    @property
    def remembered(self) -> set[str]:
        """Sandboxes with a wake in progress or a refusal still held."""
        return set(self._episodes)

    def _route(self, sid: str, port: int) -> str:
        value = (self.lookup(sid) or {}).get(f"{sid}/{port}", "")
        ip, _, rest = value.partition("|")
        if not ip or not rest.partition("|")[0].isdigit():
            raise WakeFailed(502, f"port {port} is not open")
        return value

    def _track(self, task: asyncio.Task) -> asyncio.Task:
        """Keep a reference until done, and read its exception (no 'never retrieved' noise)."""
        self._tasks.add(task)
        task.add_done_callback(lambda t: (self._tasks.discard(t), t.cancelled() or t.exception()))
        return task

    # ---- the requests ------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            async with asyncio.timeout(LINE_TIMEOUT_S):
                line = await reader.readline()
            request = parse_wake(line)
            if request is None:
                answer = fail_line(WakeFailed(400, "not a wake request"))
            else:
                self.waiting += 1
                try:
                    answer = f"LIVE {await self.wait_live(*request)}\n".encode()
                except WakeFailed as exc:
                    answer = fail_line(exc)
                finally:
                    self.waiting -= 1
            writer.write(answer)
            await writer.drain()
        except (ConnectionError, TimeoutError, ValueError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()


_WAKE = re.compile(rb"WAKE ([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?) ([1-9][0-9]{0,4})\n")
_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:;()/_=@+-]")


def parse_wake(line: bytes) -> tuple[str, int] | None:
    match = _WAKE.fullmatch(line)
    if match is None or int(match[2]) > 65535:
        return None
    return match[1].decode(), int(match[2])


def fail_line(exc: WakeFailed) -> bytes:
    """HAProxy puts the message in JSON and HTML answers as it is: only safe characters."""
    return f"FAIL {exc.status} {_UNSAFE.sub('_', str(exc))[:300]}\n".encode()

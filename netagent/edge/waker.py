"""The waker: HAProxy sends it the requests for paused sandboxes with wake on request
(docs/edge.md, "Paused sandboxes"). It calls the orchestrator's resume hook once per
sandbox (concurrent requests share the call), holds the requests until the control
plane's mirror of the registry says the sandbox is live again (within `limit_s`),
then relays each one to the guest, head and body as HAProxy sent them, so the guest
itself answers the first request. Past the limit, or when the hook says no, 503
with Retry-After. One task per sandbox: a slow or failing hook holds only that one.

It listens on loopback for HAProxy only (the X-Netagent-Wake header names the
sandbox and port; HAProxy removes a client's own). Each connection carries one
request: its answer goes back with `Connection: close`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping

from .maps import LIVE
from .wakehook import ResumeHook

log = logging.getLogger("netagent.edge")

WAKE_HEADER = b"x-netagent-wake"
POLL_S = 0.005            # how often a waiting sandbox's mirror entry is looked at
FAIL_HOLD_S = 2.0         # a refused wake answers the requests of the next 2 s without a new hook call
HEAD_LIMIT = 65536
HEAD_TIMEOUT_S = 10.0
CHUNK = 65536

Lookup = Callable[[str], Mapping[str, str] | None]   # sandbox id -> its map entries (the mirror)


class WakeFailed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Waker:
    def __init__(self, lookup: Lookup, hook: ResumeHook, limit_s: float = 30.0, connect_timeout_s: float = 3.0,
                 retry_after_s: int = 5) -> None:
        self.lookup = lookup
        self.hook = hook
        self.limit_s = limit_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_after_s = retry_after_s
        self.hook_calls = 0
        self.waiting = 0          # requests held now
        self._episodes: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._client, host, port, limit=HEAD_LIMIT, backlog=4096)
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

    async def wait_live(self, sid: str, port: int) -> tuple[str, int]:
        """Where the guest port answers once the sandbox is live; raises WakeFailed."""
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

    def _route(self, sid: str, port: int) -> tuple[str, int]:
        value = (self.lookup(sid) or {}).get(f"{sid}/{port}", "")
        ip, _, rest = value.partition("|")
        host_port = rest.partition("|")[0]
        if not ip or not host_port.isdigit():
            raise WakeFailed(502, f"port {port} is not open")
        return ip, int(host_port)

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
            async with asyncio.timeout(HEAD_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].split(b"\r\n")
            fields = [line.partition(b":") for line in lines[1:]]
            headers = {name.strip().lower(): value.strip() for name, _, value in fields}
            sid, _, port = headers.get(WAKE_HEADER, b"").decode("latin-1").rpartition("/")
            if not sid or not port.isdigit():
                await self._answer(writer, headers, WakeFailed(400, "not a wake request"), "", 0)
                return
            self.waiting += 1
            try:
                ip, host_port = await self.wait_live(sid, int(port))
            except WakeFailed as exc:
                await self._answer(writer, headers, exc, sid, int(port))
                return
            finally:
                self.waiting -= 1
            await self._relay(lines, headers, reader, writer, ip, host_port, sid, int(port))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, TimeoutError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _relay(self, lines: list[bytes], headers: dict[bytes, bytes], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, ip: str, host_port: int, sid: str, port: int) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                g_reader, g_writer = await asyncio.open_connection(ip, host_port, limit=HEAD_LIMIT)
        except (OSError, TimeoutError):
            await self._answer(writer, headers, WakeFailed(502, f"port {port} is not open"), sid, port)
            return
        upgrade = b"upgrade" in headers
        g_writer.write(one_request_head(lines, upgrade, drop=(WAKE_HEADER,)))
        up = self._track(asyncio.create_task(_pipe(reader, g_writer)))
        try:
            while True:      # interim answers (100 Continue) pass as they are
                resp = await g_reader.readuntil(b"\r\n\r\n")
                status = int(resp.split(b" ", 2)[1])
                if not 100 <= status < 200 or status == 101:
                    break
                writer.write(resp)
            resp_lines = resp[:-4].split(b"\r\n")
            writer.write(resp if status == 101 else one_request_head(resp_lines, False, drop=()))
            await _pipe(g_reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError, ConnectionError):
            pass
        finally:
            up.cancel()
            g_writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, headers: dict[bytes, bytes], exc: WakeFailed,
                      sid: str, port: int) -> None:
        message = str(exc)
        if wants_json(headers.get(b"accept")):
            body = json.dumps({"sandboxId": sid or None, "port": port or None, "message": message}).encode()
            ctype = b"application/json"
        else:
            title = {502: "Bad Gateway", 503: "Service Unavailable"}.get(exc.status, "Bad Request")
            body = (f"<!DOCTYPE html>\n<html><head><meta charset=utf-8><title>{exc.status} {title}</title></head>\n"
                    f"<body><h1>{exc.status} {title}</h1>\n<p>{message}</p></body></html>\n").encode()
            ctype = b"text/html; charset=utf-8"
        retry = f"Retry-After: {self.retry_after_s}\r\n".encode() if exc.status == 503 else b""
        writer.write(b"HTTP/1.1 %d Edge\r\nContent-Type: %s\r\nCache-Control: no-store\r\n%sContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n%s" % (exc.status, ctype, retry, len(body), body))
        with contextlib.suppress(ConnectionError):
            await writer.drain()


def wants_json(accept: bytes | None) -> bool:
    """The same rule as HAProxy's answers (docs/edge.md, "Routing rules")."""
    if accept is None:
        return False
    low = accept.lower()
    return low.startswith(b"application/json") or not any(t in low for t in (b"text/html", b"text/*", b"*/*"))


def one_request_head(lines: list[bytes], upgrade: bool, drop: tuple[bytes, ...]) -> bytes:
    """A head with `Connection: close` (one request per connection), unless it upgrades."""
    kept = [lines[0]]
    for line in lines[1:]:
        name = line.partition(b":")[0].strip().lower()
        if name in drop or (not upgrade and name in (b"connection", b"keep-alive")):
            continue
        kept.append(line)
    if not upgrade:
        kept.append(b"Connection: close")
    return b"\r\n".join(kept) + b"\r\n\r\n"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass

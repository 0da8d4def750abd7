"""The edge server: route each request to a sandbox port found in the registry and
proxy it over HTTP/1.1, bodies streamed piece by piece.

One task per client connection. A client connection keeps at most one upstream
connection, reused while consecutive requests go to the same node:port and every
response was cleanly framed. An `Upgrade` answered with 101 turns both connections
into a byte splice.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass

from ..registry import Registry, SandboxRecord
from .errors import error_response
from .http1 import (
    MAX_HEAD,
    READ_SIZE,
    BodyFraming,
    BodyReader,
    BodyWriter,
    Framing,
    Headers,
    HttpError,
    RequestHead,
    ResponseHead,
    encode_request_head,
    encode_response_head,
    parse_content_length,
    parse_request_head,
    parse_response_head,
    read_head,
    request_framing,
    response_framing,
    strip_hop_by_hop,
)
from .routing import RouteError, Router, Target

log = logging.getLogger("netagent.edge")

_ABSOLUTE_FORM = re.compile(r"(?i)https?://([^/?#]*)(.*)")
CACHE_MAX_ENTRIES = 10_000


@dataclass
class EdgeConfig:
    domain: str
    shared_host: str | None = None
    connect_timeout_s: float = 3.0      # upstream TCP connect; past it: 504
    idle_timeout_s: float = 75.0        # a client connection waiting for its next request
    upload_grace_s: float = 1.0         # after a response, how long an unfinished upload may still run
    splice_linger_s: float = 10.0       # after one side of an upgraded connection closes
    trust_forwarded: bool = False       # keep/append incoming X-Forwarded-* (a trusted proxy in front)
    cache_ttl_s: float = 0.25           # reuse a registry answer this long (0: ask every time; at most 0.25)

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_ttl_s <= 0.25:
            raise ValueError("cache_ttl_s must be between 0 and 0.25 s")


class Upstream:
    """One connection to node_address:host_port."""

    def __init__(self, addr: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.addr = addr
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, addr: tuple[str, int], timeout_s: float) -> Upstream:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr, limit=MAX_HEAD), timeout_s)
        return cls(addr, reader, writer)

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()


class _NoAnswer(Exception):
    """The upstream closed or reset before sending any response byte."""


class EdgeServer:
    def __init__(self, registry: Registry, config: EdgeConfig) -> None:
        self.registry = registry
        self.config = config
        self.router = Router(config.domain, config.shared_host)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._cache: dict[str, tuple[float, SandboxRecord | None]] = {}

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._on_client, host, port, limit=MAX_HEAD)
        return self._server.sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def lookup(self, sandbox_id: str) -> SandboxRecord | None:
        """The registry's record, or a copy at most cache_ttl_s old (absent ones too)."""
        ttl = self.config.cache_ttl_s
        if ttl <= 0:
            return await self.registry.get_sandbox(sandbox_id)
        now = time.monotonic()
        hit = self._cache.get(sandbox_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await self.registry.get_sandbox(sandbox_id)
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
        self._cache[sandbox_id] = (now + ttl, record)
        return record

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        conn = ClientConnection(self, reader, writer)
        try:
            await conn.run()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("edge connection failed")
        finally:
            self._clients.discard(task)
            conn.close()


class ClientConnection:
    def __init__(self, server: EdgeServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.config = server.config
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) else "unix"
        self.upstream: Upstream | None = None

    def close(self) -> None:
        self._drop_upstream()
        self.writer.close()

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    # -- the request loop -----------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # an idle connection is closed by a timer (cheaper than wait_for on every request)
            idle = loop.call_later(self.config.idle_timeout_s, self.writer.transport.abort)
            try:
                data = await read_head(self.reader)
            except OSError:
                return
            except HttpError as exc:
                await self._send(error_response(exc.status, exc.message, None, close=True))
                log.info("- - %d", exc.status)
                return
            finally:
                idle.cancel()
            if data is None:
                return
            started = time.monotonic()
            try:
                head = parse_request_head(data)
            except HttpError as exc:
                await self._send(error_response(exc.status, exc.message, None, close=True))
                log.info("- - %d", exc.status)
                return
            status, keep = await self._exchange(head)
            log.info("%s %s %d %.1fms", head.method, head.headers.get("host") or "-", status,
                     (time.monotonic() - started) * 1000)
            if not keep:
                return

    async def _send(self, data: bytes) -> bool:
        try:
            self.writer.write(data)
            await self.writer.drain()
            return True
        except (OSError, RuntimeError):
            return False

    async def _fail(self, head: RequestHead, status: int, message: str, target: Target | None = None,
                    close: bool = False) -> tuple[int, bool]:
        """Answer from the edge itself; keep the connection if the request had no body left unread."""
        keep = head.keep_alive and not close
        sent = await self._send(error_response(
            status, message, head.headers.get("accept"), sandbox_id=target.sandbox_id if target else None,
            port=target.port if target else None, close=not keep, head_only=head.method == "HEAD"))
        return status, keep and sent

    async def _exchange(self, head: RequestHead) -> tuple[int, bool]:
        if head.method == "CONNECT":
            return await self._fail(head, 405, "CONNECT is not supported", close=True)
        try:
            framing = request_framing(head)
            host, path = self._host_and_path(head)
        except HttpError as exc:
            return await self._fail(head, exc.status, exc.message, close=True)
        unread = not framing.empty       # an answer before reading the body must close
        try:
            target = self.server.router.route(host, head.headers.get("x-sandbox-id"),
                                              head.headers.get("x-sandbox-port"))
        except RouteError as exc:
            return await self._fail(head, 400, str(exc), close=unread)
        try:
            record = await self.server.lookup(target.sandbox_id)
        except Exception as exc:  # any backend failure is the client's bad gateway
            log.warning("registry lookup of %s failed: %s", target.sandbox_id, exc)
            return await self._fail(head, 502, "the routing registry is unavailable", target, close=unread)
        if record is None:
            return await self._fail(head, 404, f"sandbox {target.sandbox_id} not found", target, close=unread)
        port = record.port(target.port, "tcp")
        if port is not None and not port.public:   # tokens are checked by the HAProxy edge only
            return await self._fail(head, 401, "a valid access token is required", target, close=unread)
        if port is None or port.reachable is not True or not record.node_address:
            return await self._fail(head, 502, f"port {target.port} is not open", target, close=unread)
        request = self._upstream_request(head, framing, host, path)
        return await self._forward(head, framing, request, target, (record.node_address, port.host_port))

    @staticmethod
    def _host_and_path(head: RequestHead) -> tuple[str | None, str]:
        hosts = head.headers.get_all("host")
        if len(hosts) > 1:
            raise HttpError(400, "more than one Host header")
        host = hosts[0] if hosts else None
        target = head.target
        if target.startswith("/") or (target == "*" and head.method == "OPTIONS"):
            path = target
        elif m := _ABSOLUTE_FORM.fullmatch(target):   # absolute-form: its authority is the host
            host, path = m[1], m[2] or "/"
            if not path.startswith("/"):
                path = "/" + path
        else:
            raise HttpError(400, "malformed request target")
        if head.version >= (1, 1) and not hosts:
            raise HttpError(400, "missing Host header")
        return host, path

    def _upstream_request(self, head: RequestHead, framing: BodyFraming, host: str | None, path: str) -> bytes:
        headers = strip_hop_by_hop(head.headers)
        if host is not None and host != head.headers.get("host"):
            headers.set("Host", host)
        if "trailers" in head.headers.tokens("te"):
            headers.add("TE", "trailers")
        if framing.kind is Framing.LENGTH:
            headers.add("Content-Length", str(framing.length))
        elif framing.kind is Framing.CHUNKED:
            headers.add("Transfer-Encoding", "chunked")
            for value in head.headers.get_all("trailer"):
                headers.add("Trailer", value)
        if upgrade := head.upgrade:
            headers.add("Connection", "Upgrade")
            headers.add("Upgrade", upgrade)
        self._add_forwarded(headers, head, host)
        return encode_request_head(head.method, path, headers)

    def _add_forwarded(self, headers: Headers, head: RequestHead, host: str | None) -> None:
        prior = head.headers.get_all("x-forwarded-for") if self.config.trust_forwarded else []
        headers.set("X-Forwarded-For", ", ".join([*prior, self.peer_ip]))
        if not (self.config.trust_forwarded and head.headers.get("x-forwarded-host")):
            headers.set("X-Forwarded-Host", host or "")
        if not (self.config.trust_forwarded and head.headers.get("x-forwarded-proto")):
            headers.set("X-Forwarded-Proto", "http")

    # -- one proxied exchange -------------------------------------------------------------

    async def _connect(self, addr: tuple[str, int]) -> bool:
        """Make self.upstream a connection to addr; True if an idle one was reused."""
        if self.upstream is not None and self.upstream.addr == addr and self.upstream.usable:
            return True
        self._drop_upstream()
        self.upstream = await Upstream.open(addr, self.config.connect_timeout_s)
        return False

    async def _forward(self, head: RequestHead, framing: BodyFraming, request: bytes, target: Target,
                       addr: tuple[str, int]) -> tuple[int, bool]:
        unread = not framing.empty
        for attempt in (1, 2):
            try:
                reused = await self._connect(addr)
            except TimeoutError:
                return await self._fail(head, 504, f"port {target.port} did not accept a connection within "
                                        f"{self.config.connect_timeout_s:g}s", target, close=unread)
            except OSError:
                return await self._fail(head, 502, f"port {target.port} refused the connection", target,
                                        close=unread)
            upstream = self.upstream
            assert upstream is not None
            upstream.writer.write(request)
            upload = None if framing.empty else asyncio.create_task(self._upload(framing, upstream))
            try:
                response = await self._final_response(head, upstream)
                break
            except _NoAnswer:
                self._drop_upstream()
                if reused and upload is None and attempt == 1:
                    continue     # the idle connection had gone stale: once more on a fresh one
                return await self._upload_failed(head, upload, target) or await self._fail(
                    head, 502, f"port {target.port} closed the connection without answering", target, close=True)
            except (HttpError, OSError) as exc:
                self._drop_upstream()
                message = exc.message if isinstance(exc, HttpError) else f"port {target.port}: {exc}"
                return await self._upload_failed(head, upload, target) or await self._fail(
                    head, 502, message, target, close=True)
        if response.status == 101:
            return await self._switch_protocols(head, response, upload, target)
        return await self._relay_response(head, response, upload, target)

    async def _upload(self, framing: BodyFraming, upstream: Upstream) -> bool:
        """Stream the request body to the upstream. True if all of it went through;
        False if the upstream stopped reading it (its answer decides). A client-side
        failure aborts the upstream connection and raises."""
        source = BodyReader(self.reader, framing, error_status=400)
        sink = BodyWriter(upstream.writer, chunked=framing.kind is Framing.CHUNKED)
        while True:
            try:
                data = await source.read()
            except BaseException:
                upstream.abort()
                raise
            try:
                if not data:
                    await sink.finish(source.trailers)
                    return True
                await sink.write(data)
            except OSError:
                return False

    async def _upload_failed(self, head: RequestHead, upload: asyncio.Task[bool] | None,
                             target: Target) -> tuple[int, bool] | None:
        """If the exchange broke because the client's body did, answer for that (400) or
        give up (client gone). None if the upload is not to blame."""
        if upload is None:
            return None
        if not upload.done():
            await asyncio.wait({upload}, timeout=0.05)   # an abort by the upload lands first
        if not upload.done():
            upload.cancel()
            with contextlib.suppress(BaseException):
                await upload
            return None
        exc = None if upload.cancelled() else upload.exception()
        if isinstance(exc, HttpError):
            return await self._fail(head, exc.status, exc.message, target, close=True)
        if exc is not None:
            return 499, False        # the client went away mid-upload
        return None

    async def _settle_upload(self, upload: asyncio.Task[bool] | None) -> bool:
        """After the response: True if the request body was read to its end."""
        if upload is None:
            return True
        if not upload.done():
            await asyncio.wait({upload}, timeout=self.config.upload_grace_s)
        if not upload.done():
            upload.cancel()
            with contextlib.suppress(BaseException):
                await upload
            return False
        return not upload.cancelled() and upload.exception() is None and upload.result()

    async def _final_response(self, head: RequestHead, upstream: Upstream) -> ResponseHead:
        """The upstream's final (or 101) response head; interim 1xx heads go to the client."""
        answered = False
        while True:
            try:
                data = await read_head(upstream.reader, error_status=502, too_large=502)
            except OSError:
                if answered:
                    raise
                raise _NoAnswer from None
            if data is None:
                if answered:
                    raise HttpError(502, "upstream closed the connection after an interim response")
                raise _NoAnswer
            answered = True
            response = parse_response_head(data)
            if response.status >= 200 or response.status == 101:
                return response
            if head.version >= (1, 1):    # 100 Continue, 103 Early Hints
                headers = strip_hop_by_hop(response.headers)
                await self._send(encode_response_head(response.status, response.reason, headers))

    async def _relay_response(self, head: RequestHead, response: ResponseHead, upload: asyncio.Task[bool] | None,
                              target: Target) -> tuple[int, bool]:
        upstream = self.upstream
        assert upstream is not None
        try:
            framing = response_framing(response, head.method)
        except HttpError as exc:
            self._drop_upstream()
            await self._settle_upload(upload)
            return await self._fail(head, exc.status, exc.message, target, close=True)
        headers = strip_hop_by_hop(response.headers)
        client_11 = head.version >= (1, 1)
        chunked_out = framing.kind in (Framing.CHUNKED, Framing.CLOSE) and client_11
        if framing.kind is Framing.LENGTH:
            headers.add("Content-Length", str(framing.length))
        elif framing.kind is Framing.NONE:
            _keep_head_framing(head, response, headers)
        elif chunked_out:
            headers.add("Transfer-Encoding", "chunked")
            if framing.kind is Framing.CHUNKED:
                for value in response.headers.get_all("trailer"):
                    headers.add("Trailer", value)
        keep = head.keep_alive and (framing.kind is not Framing.CLOSE or chunked_out)
        if not keep:
            headers.add("Connection", "close")
        reusable = response.reusable and framing.kind is not Framing.CLOSE
        source = BodyReader(upstream.reader, framing, error_status=502)
        sink = BodyWriter(self.writer, chunked=chunked_out)
        try:
            self.writer.write(encode_response_head(response.status, response.reason, headers))
            while data := await source.read():
                await sink.write(data)
            await sink.finish(source.trailers if framing.kind is Framing.CHUNKED else None)
        except (HttpError, OSError, RuntimeError):
            # a truncated upstream body or a client gone mid-response: nothing to say, close both
            self._drop_upstream()
            if upload is not None:
                upload.cancel()
            return response.status, False
        if not await self._settle_upload(upload):
            keep = reusable = False
        if not reusable:
            self._drop_upstream()
        return response.status, keep

    async def _switch_protocols(self, head: RequestHead, response: ResponseHead,
                                upload: asyncio.Task[bool] | None, target: Target) -> tuple[int, bool]:
        upstream = self.upstream
        assert upstream is not None
        self.upstream = None
        if head.upgrade is None or not await self._settle_upload(upload):
            upstream.close()
            return await self._fail(head, 502, "upstream switched protocols unasked", target, close=True)
        headers = strip_hop_by_hop(response.headers)
        headers.add("Connection", "Upgrade")
        for value in response.headers.get_all("upgrade"):
            headers.add("Upgrade", value)
        try:
            if await self._send(encode_response_head(101, response.reason, headers)):
                await splice(self.reader, self.writer, upstream.reader, upstream.writer,
                             self.config.splice_linger_s)
        finally:
            upstream.close()
        return 101, False


def _keep_head_framing(head: RequestHead, response: ResponseHead, headers: Headers) -> None:
    """A HEAD or 304 answer keeps the framing a GET would have had (no body follows)."""
    if not (head.method == "HEAD" or response.status == 304):
        return
    length = parse_content_length(response.headers.get_all("content-length"))
    if length is not None:
        headers.add("Content-Length", str(length))
    elif response.headers.tokens("transfer-encoding") == ["chunked"] and head.version >= (1, 1):
        headers.add("Transfer-Encoding", "chunked")


async def splice(a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
                 b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter, linger_s: float) -> None:
    """Copy bytes both ways. A clean EOF one way is passed on as a half-close and the
    other way may go on for linger_s; an error either way ends both."""

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(READ_SIZE):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof() and not dst.is_closing():
            dst.write_eof()

    pumps = {asyncio.create_task(pump(a_reader, b_writer)), asyncio.create_task(pump(b_reader, a_writer))}
    try:
        done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        if pending and all(t.exception() is None for t in done):
            await asyncio.wait(pending, timeout=linger_s)
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)

"""One client connection of the Python edge: read each request, route it to a
sandbox port found in the registry, and proxy it over HTTP/1.1 with bodies
streamed piece by piece.

A client connection keeps at most one upstream connection, reused while
consecutive requests go to the same node:port and every response was cleanly
framed. An `Upgrade` answered with 101 turns both connections into a byte
splice (upstream.py). Answers from the edge itself come from errors.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..registry import SandboxRecord
from .errors import error_response
from .http1 import (
    BodyFraming,
    BodyReader,
    BodyWriter,
    Framing,
    HttpError,
    RequestHead,
    ResponseHead,
    encode_response_head,
    parse_request_head,
    parse_response_head,
    read_head,
    request_framing,
    response_framing,
    strip_hop_by_hop,
)
from .rewrite import host_and_path, keep_head_framing, upstream_request
from .routing import RouteError, Router, Target
from .upstream import NoAnswer, Upstream, splice

if TYPE_CHECKING:
    from .proxy import EdgeConfig

log = logging.getLogger("netagent.edge")
Lookup = Callable[[str], Awaitable[SandboxRecord | None]]   # sandbox id -> its registry record


class ClientConnection:
    def __init__(self, config: EdgeConfig, router: Router, lookup: Lookup,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.config = config
        self.router = router
        self.lookup = lookup
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
            host, path = host_and_path(head)
        except HttpError as exc:
            return await self._fail(head, exc.status, exc.message, close=True)
        unread = not framing.empty       # an answer before reading the body must close
        try:
            target = self.router.route(host, head.headers.get("x-sandbox-id"), head.headers.get("x-sandbox-port"))
        except RouteError as exc:
            return await self._fail(head, 400, str(exc), close=unread)
        try:
            record = await self.lookup(target.sandbox_id)
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
        request = upstream_request(head, framing, host, path, self.peer_ip, self.config.trust_forwarded)
        return await self._forward(head, framing, request, target, (record.node_address, port.host_port))

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
            except NoAnswer:
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
                raise NoAnswer from None
            if data is None:
                if answered:
                    raise HttpError(502, "upstream closed the connection after an interim response")
                raise NoAnswer
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
            keep_head_framing(head, response, headers)
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

"""Test plumbing for the edge: an upstream HTTP/1.1 server and a raw client, both on
127.0.0.1 and written byte for byte here (they check HAProxy's framing)."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from netagent.registry import PortRecord, SandboxRecord

LOOPBACK = "127.0.0.1"


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_len: int = 0
    body_sha256: str = ""
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


async def _read_fields(reader: asyncio.StreamReader) -> list[tuple[str, str]] | None:
    fields = []
    while True:
        line = await reader.readline()
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return fields
        name, _, value = line.decode("latin-1").partition(":")
        fields.append((name.strip().lower(), value.strip()))


class UpstreamServer:
    """Answers by path; a handler returns True to keep the connection open.

    /echo...      200 JSON describing the request (method, target, headers, body length+sha256)
    /chunked      200 chunked, three pieces and a trailer
    /close        200 without Content-Length, body ends when the connection closes
    /wait         200 chunked: one piece, then waits for `release` before the last one
    /upload-wait  reads the body, setting `first_body_bytes` when the first bytes arrive
    Upgrade: ...  101, then echoes every byte back until the client closes
    """

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.requests: list[Request] = []
        self.release = asyncio.Event()
        self.first_body_bytes = asyncio.Event()
        self.handlers: dict[str, Handler] = {}
        self.raw_handlers: dict[str, Handler] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, backlog: int = 100) -> UpstreamServer:
        self._server = await asyncio.start_server(self._client, LOOPBACK, 0, backlog=backlog)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ")
                headers = await _read_fields(reader)
                if headers is None:
                    return
                req = Request(method, target, headers)
                self.requests.append(req)
                path = target.split("?")[0]
                if req.header("upgrade"):
                    await self._upgrade(req, reader, writer)
                    return
                if path in self.raw_handlers:     # the handler reads the body itself, or not
                    if not await self.raw_handlers[path](req, reader, writer):
                        return
                    continue
                if (req.header("expect") or "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await self._read_body(req, reader, self.first_body_bytes.set if path == "/upload-wait" else None)
                handler = self.handlers.get(path)
                if handler is None:
                    builtin = {"/chunked": self._chunked, "/close": self._close, "/wait": self._wait}
                    keep = await builtin.get(path, self._echo)(req, reader, writer)
                else:
                    keep = await handler(req, reader, writer)
                if not keep:
                    return
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass    # the edge cut the connection (which some tests make it do)
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _read_body(req: Request, reader: asyncio.StreamReader,
                         on_first: Callable[[], None] | None = None) -> None:
        digest = hashlib.sha256()
        te = (req.header("transfer-encoding") or "").lower()
        if te == "chunked":
            while True:
                size = int((await reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    req.trailers = await _read_fields(reader) or []
                    break
                data = await reader.readexactly(size)
                if on_first and not req.body_len:
                    on_first()
                digest.update(data)
                req.body_len += size
                assert await reader.readexactly(2) == b"\r\n"
        elif (cl := req.header("content-length")) is not None:
            left = int(cl)
            while left:
                data = await reader.read(min(left, 65536))
                if not data:
                    raise ConnectionError("body cut short")
                if on_first and not req.body_len:
                    on_first()
                digest.update(data)
                req.body_len += len(data)
                left -= len(data)
        req.body_sha256 = digest.hexdigest()

    async def _echo(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        body = json.dumps({"method": req.method, "target": req.target, "headers": req.headers,
                           "body_len": req.body_len, "body_sha256": req.body_sha256,
                           "trailers": req.trailers}).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + (body if req.method != "HEAD" else b""))
        await writer.drain()
        return True

    async def _chunked(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                     b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Checksum: abc\r\n\r\n")
        await writer.drain()
        return True

    async def _close(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        return False

    async def _wait(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await self.release.wait()
        writer.write(b"4\r\nlast\r\n0\r\n\r\n")
        await writer.drain()
        return True

    async def _upgrade(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: %s\r\n\r\n" % websocket_accept(req.header("sec-websocket-key") or ""))
        await writer.drain()
        while data := await reader.read(65536):
            writer.write(b"echo:" + data)
            await writer.drain()


def websocket_accept(key: str) -> bytes:
    """RFC 6455 section 4.2.2 (HAProxy checks it when it turns an HTTP/2 WebSocket into HTTP/1.1)."""
    return base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def json(self) -> dict:
        return json.loads(self.body)


class RawClient:
    """One client connection; requests written byte for byte, responses parsed here."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(reader, writer)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def request(self, method: str, target: str, host: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> Response:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return await self.response(method)

    async def response_head(self) -> tuple[int, list[tuple[str, str]]]:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed before a response")
        status = int(status_line.split(b" ")[1])
        headers = await _read_fields(self.reader)
        assert headers is not None
        return status, headers

    async def response(self, method: str = "GET") -> Response:
        status, headers = await self.response_head()
        while 100 <= status < 200 and status != 101:
            status, headers = await self.response_head()
        resp = Response(status, headers, b"")
        if method == "HEAD" or status < 200 or status in (204, 304):
            return resp
        if (resp.header("transfer-encoding") or "").lower() == "chunked":
            parts = []
            while size := int((await self.reader.readline()).split(b";")[0].strip(), 16):
                parts.append(await self.reader.readexactly(size))
                assert await self.reader.readexactly(2) == b"\r\n"
            resp.trailers = await _read_fields(self.reader) or []
            resp.body = b"".join(parts)
        elif (cl := resp.header("content-length")) is not None:
            resp.body = await self.reader.readexactly(int(cl))
        else:
            resp.body = await self.reader.read()
        return resp

    async def closed_by_peer(self, timeout: float = 2.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except ConnectionError:
            return True


def sandbox(sandbox_id: str, ports: dict[int, tuple[int, bool | None]], node_address: str = LOOPBACK,
            seq: int = 1, protocol: str = "tcp") -> SandboxRecord:
    """A record with guest_port -> (host_port, reachable). Schema v1 (EDGE_TEST_V): it
    lives by its own TTL, so the edge tests need no node heartbeat; v2 records, served
    while their node lives, are covered in tests/registry/test_liveness.py."""
    return SandboxRecord(sandbox_id, "node-1", node_address, seq, 0.0, tuple(
        PortRecord(guest, protocol, host, reachable, 0.0, 0.0) for guest, (host, reachable) in sorted(ports.items())),
        v=EDGE_TEST_V)


EDGE_TEST_V = 1


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]

"""An orchestrator's resume hook for the edge tests and bench: an UpstreamServer on
loopback whose /resume checks each call's HMAC signature, records it, and does what
the test says: resume the sandbox (a coroutine the test gives, e.g. writing its live
record), answer 500, hang, or wait for `release`."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .helpers import Request, UpstreamServer

Resume = Callable[[str], Awaitable[None]]


@dataclass
class HookCall:
    sandbox_id: str
    port: int
    requested_at: float
    received_at: float          # time.monotonic() when the call arrived
    signature_ok: bool


class HookServer:
    def __init__(self, key: bytes, resume: Resume | None = None) -> None:
        self.key = key
        self.resume = resume                       # None: answer 200 and do nothing
        self.behaviour: dict[str, str] = {}        # sandbox id -> "500" | "hang" | "wait" (else resume)
        self.release = asyncio.Event()             # "wait": resume once set
        self.calls: list[HookCall] = []
        self._server = UpstreamServer()
        self._server.raw_handlers["/resume"] = self._resume

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/resume"

    async def start(self) -> HookServer:
        await self._server.start()
        return self

    async def stop(self) -> None:
        await self._server.stop()

    async def _resume(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        body = await reader.readexactly(int(req.header("content-length") or 0))
        want = "sha256=" + hmac.new(self.key, body, hashlib.sha256).hexdigest()
        doc = json.loads(body)
        call = HookCall(doc["sandboxId"], doc["port"], doc["requestedAt"], time.monotonic(),
                        hmac.compare_digest(want, req.header("x-netagent-signature") or ""))
        self.calls.append(call)
        what = self.behaviour.get(call.sandbox_id, "resume")
        if what == "hang":
            await asyncio.Event().wait()
        if what == "wait":
            await self.release.wait()
        ok = what != "500" and call.signature_ok
        if ok and self.resume is not None:
            await self.resume(call.sandbox_id)
        writer.write(b"HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                     % (b"200 OK" if ok else b"500 Internal Server Error"))
        await writer.drain()
        return False

"""The orchestrator's resume hook (docs/edge.md, "The resume hook"): one signed POST.

Body: {"sandboxId": ..., "port": ..., "requestedAt": unix seconds} (compact JSON).
Header: X-Netagent-Signature: sha256=hex(HMAC-SHA256(key, body)). Any 2xx is a yes;
the edge then waits for the sandbox's record to be live again. A plain HTTP/1.1
client on asyncio streams (http:// and https://), a new connection per call, so a
slow hook holds nothing but its own call.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Netagent-Signature"
MIN_KEY_BYTES = 32


class HookFailed(Exception):
    """The hook did not say yes: an error status, a refused or cut connection, a timeout."""


def sign(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def hook_body(sandbox_id: str, port: int, now: float) -> bytes:
    return json.dumps({"sandboxId": sandbox_id, "port": port, "requestedAt": round(now, 3)},
                      separators=(",", ":")).encode()


@dataclass(frozen=True)
class ResumeHook:
    url: str
    key: bytes
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"resume hook URL {self.url!r} is not http(s)://host[:port]/path")
        if len(self.key) < MIN_KEY_BYTES:
            raise ValueError(f"the resume hook key must be at least {MIN_KEY_BYTES} bytes")

    async def call(self, sandbox_id: str, port: int) -> int:
        """POST the signed body; returns the 2xx status, raises HookFailed otherwise."""
        body = hook_body(sandbox_id, port, time.time())
        parts = urlsplit(self.url)
        tls = parts.scheme == "https"
        port_no = parts.port or (443 if tls else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = (f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{SIGNATURE_HEADER}: {sign(self.key, body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        writer = None
        try:
            async with asyncio.timeout(self.timeout_s):
                reader, writer = await asyncio.open_connection(
                    parts.hostname, port_no, ssl=ssl.create_default_context() if tls else None)
                writer.write(head + body)
                await writer.drain()
                status_line = await reader.readline()
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise HookFailed(f"resume hook {self.url}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
        fields = status_line.split(b" ", 2)
        if len(fields) < 2 or not fields[1].isdigit():
            raise HookFailed(f"resume hook {self.url}: no HTTP status line")
        status = int(fields[1])
        if not 200 <= status < 300:
            raise HookFailed(f"resume hook {self.url} answered {status}")
        return status

"""The edge's custom-domain API: a small HTTP/1.1 JSON service of the control plane
(`--domains-api IP:PORT`, for the orchestrator only: loopback or a private address,
and a bearer token when `--domains-api-token-file` is given). docs/api.md lists it.

  PUT    /v1/domains/{host}   {"sandboxId": "abc", "port": 3000}  -> 202 new, 200 same, 400, 409
  GET    /v1/domains/{host}                                         -> 200 record, 404
  GET    /v1/domains                                                -> 200 {"domains": [...]}
  DELETE /v1/domains/{host}                                         -> 204, 404

One request per connection (`Connection: close`); heads up to 8 KiB, bodies up to 4 KiB.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging

from .domainmanager import DomainConflict, DomainManager
from .domains import DomainError
from .runtime import HAProxyError

log = logging.getLogger("netagent.edge.domains")

PREFIX = "/v1/domains"
MAX_HEAD = 8192
MAX_BODY = 4096
READ_TIMEOUT_S = 10.0
_REASONS = {200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class DomainApi:
    def __init__(self, manager: DomainManager, token: str = "") -> None:
        self.manager = manager
        self.token = token
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                status, doc = await self._request(reader)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            status, doc = 400, {"message": "incomplete or oversized request"}
        except Exception:      # a bug must not leave the caller hanging; it is logged
            log.exception("domains api: request failed")
            status, doc = 500, {"message": "internal error"}
        body = b"" if status == 204 else json.dumps(doc).encode() + b"\n"
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode() + body)
            await writer.drain()
        writer.close()

    async def _request(self, reader: asyncio.StreamReader) -> tuple[int, object]:
        raw = await reader.readuntil(b"\r\n\r\n")
        if len(raw) > MAX_HEAD:
            return 400, {"message": "request head too large"}
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return 400, {"message": "bad request line"}
        method, path, _ = parts
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            return 413, {"message": f"body over {MAX_BODY} bytes"}
        body = await reader.readexactly(int(length))
        if self.token and not hmac.compare_digest(headers.get("authorization", "").encode(),
                                                  f"Bearer {self.token}".encode()):
            return 401, {"message": "a valid bearer token is required"}
        try:
            return await self._route(method, path.split("?", 1)[0], body)
        except DomainError as exc:
            return 400, {"message": str(exc)}
        except DomainConflict as exc:
            return 409, {"message": str(exc)}
        except HAProxyError as exc:
            log.warning("domains api: %s", exc)
            return 503, {"message": "haproxy did not take the change; retry"}

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, object]:
        m = self.manager
        if path.rstrip("/") == PREFIX:
            if method != "GET":
                return 405, {"message": "GET lists the domains"}
            return 200, {"domains": [r.to_json() for r in m.records.values()]}
        if not path.startswith(PREFIX + "/"):
            return 404, {"message": "not found"}
        host = path[len(PREFIX) + 1:]
        if method == "PUT":
            try:
                doc = json.loads(body or b"{}")
            except ValueError:
                return 400, {"message": "the body is not JSON"}
            if not isinstance(doc, dict):
                return 400, {"message": "the body is not a JSON object"}
            record, created = await m.put(host, doc.get("sandboxId"), doc.get("port"))
            return (202 if created else 200), record.to_json()
        if method == "GET":
            record = m.get(host)
            return (200, record.to_json()) if record else (404, {"message": f"{host} is not mapped"})
        if method == "DELETE":
            return (204, None) if await m.remove(host) else (404, {"message": f"{host} is not mapped"})
        return 405, {"message": "PUT, GET or DELETE"}

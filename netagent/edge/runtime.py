"""HAProxy's runtime API (the admin stats socket): thin I/O for the map ops.

One persistent connection in `prompt` mode, so commands are pipelined: every
reply ends with "\\n> ". A full sync loads each shard into a new map version
(`prepare map`, `add map @v` with payloads, `commit map`), so HAProxy switches
from the old contents to the new in one step and never serves a half-loaded map.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from .haconfig import SYNCED_KEY, shard_map, synced_map
from .maps import MapOp, ShardedEntries

PROMPT_END = b"\n> "
PAYLOAD_BYTES = 12_000     # an `add map` payload must fit HAProxy's 16 KiB buffer
CONNECT_TIMEOUT_S = 2.0
REPLY_TIMEOUT_S = 10.0


class HAProxyError(Exception):
    """HAProxy refused a command, or the socket failed."""


class HAProxyRuntime:
    def __init__(self, socket_path: str, map_dir: str) -> None:
        self.socket_path = socket_path
        self.map_dir = map_dir
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        await self.close()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                self._reader, self._writer = await asyncio.open_unix_connection(self.socket_path, limit=1 << 24)
                self._writer.write(b"prompt\n")
                await self._reply()
        except (OSError, TimeoutError) as exc:
            await self.close()
            raise HAProxyError(f"haproxy runtime socket {self.socket_path}: {exc}") from exc

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _reply(self) -> str:
        assert self._reader is not None
        try:
            async with asyncio.timeout(REPLY_TIMEOUT_S):
                raw = await self._reader.readuntil(PROMPT_END)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, TimeoutError) as exc:
            await self.close()
            raise HAProxyError(f"haproxy runtime socket {self.socket_path}: {exc!r}") from exc
        return raw[: -len(PROMPT_END)].decode(errors="replace")

    async def commands(self, lines: Sequence[str]) -> list[str]:
        """Send every command, then read every reply (in order)."""
        if not self.connected:
            await self.connect()
        assert self._writer is not None
        self._writer.write("".join(lines).encode())
        try:
            await self._writer.drain()
        except OSError as exc:
            await self.close()
            raise HAProxyError(f"haproxy runtime socket {self.socket_path}: {exc}") from exc
        return [await self._reply() for _ in lines]

    async def info(self) -> dict[str, str]:
        (reply,) = await self.commands(["show info\n"])
        return dict(line.split(": ", 1) for line in reply.splitlines() if ": " in line)

    async def apply(self, ops: Sequence[MapOp]) -> None:
        """Incremental ops; a failed op raises (the caller resyncs fully)."""
        if not ops:
            return
        lines = [self._op_line(op) for op in ops]
        for op, reply in zip(ops, await self.commands(lines), strict=True):
            if reply.strip():
                raise HAProxyError(f"haproxy refused {op.verb} map {op.key!r}: {reply.strip()}")

    def _op_line(self, op: MapOp) -> str:
        path = shard_map(self.map_dir, op.shard)
        if op.verb == "del":
            return f"del map {path} {op.key}\n"
        return f"{op.verb} map {path} {op.key} {op.value}\n"

    async def load_all(self, shards: ShardedEntries) -> None:
        """Replace every shard's contents at once per shard (prepare, payloads, commit),
        then set the flag that this process is synced (unknown hosts: 404, not 503)."""
        paths = {i: shard_map(self.map_dir, i) for i in shards}
        replies = await self.commands([f"prepare map {paths[i]}\n" for i in shards])
        versions = {}
        for i, reply in zip(shards, replies, strict=True):
            if not reply.startswith("New version created:"):
                raise HAProxyError(f"haproxy refused prepare map {paths[i]}: {reply.strip()}")
            versions[i] = reply.split(":", 1)[1].strip()
        lines = []
        for i, entries in shards.items():
            lines += [f"add map @{versions[i]} {paths[i]} <<\n{chunk}\n" for chunk in _payloads(entries)]
        for line, reply in zip(lines, await self.commands(lines), strict=True):
            if reply.replace("+", "").strip():
                raise HAProxyError(f"haproxy refused {line.split(' <<')[0]}: {reply.strip()[:200]}")
        replies = await self.commands([f"commit map @{versions[i]} {paths[i]}\n" for i in shards])
        for i, reply in zip(shards, replies, strict=True):
            if reply.strip():
                raise HAProxyError(f"haproxy refused commit map {paths[i]}: {reply.strip()}")
        await self.set_synced()

    async def set_synced(self) -> None:
        """Idempotent: the flag map holds exactly the one key (it is empty on disk)."""
        flag = synced_map(self.map_dir)
        (reply,) = await self.commands([f"prepare map {flag}\n"])
        if not reply.startswith("New version created:"):
            raise HAProxyError(f"haproxy refused prepare map {flag}: {reply.strip()}")
        version = reply.split(":", 1)[1].strip()
        replies = await self.commands([f"add map @{version} {flag} {SYNCED_KEY} 1\n",
                                       f"commit map @{version} {flag}\n"])
        if any(r.strip() for r in replies):
            raise HAProxyError(f"haproxy refused the synced flag in {flag}: {' '.join(replies).strip()}")


async def haproxy_pid(socket_path: str, timeout_s: float = 1.0) -> str:
    """The pid of the process that now owns the admin socket, on a fresh connection
    (a kept connection may still reach an old process after a reload); "" if none answers."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(socket_path)
            try:
                writer.write(b"show info\n")
                reply = await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return ""
    for line in reply.decode(errors="replace").splitlines():
        if line.startswith("Pid: "):
            return line[5:].strip()
    return ""


def _payloads(entries: dict[str, str]) -> list[str]:
    chunks, current, size = [], [], 0
    for key, value in entries.items():
        line = f"{key} {value}\n"
        if current and size + len(line) > PAYLOAD_BYTES:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append("".join(current))
    return chunks

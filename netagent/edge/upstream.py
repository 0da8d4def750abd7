"""The upstream side of the Python edge: one connection to node_address:host_port,
and the byte splice an upgraded (101) connection turns into."""
from __future__ import annotations

import asyncio

from .http1 import MAX_HEAD, READ_SIZE


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


class NoAnswer(Exception):
    """The upstream closed or reset before sending any response byte."""


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

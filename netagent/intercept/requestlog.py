"""The interceptor's request records, durable across agent restarts (thin I/O).

HAProxy writes one JSON line per request to its stdout (`log stdout format
raw`), and its stdout is a file the agent made for it: a HAProxy left running
by an agent killed -9 keeps writing there while no agent runs. The agent tails
the file from an offset it saves after each batch is recorded (request log and
events), so the next start reads what was written while it was down, and
nothing it had already recorded. Read bytes are punched out of the file
(fallocate PUNCH_HOLE): its offsets keep growing, its disk use is what is not
yet read. docs/security.md "What survives a restart" says why a
file and not the former datagram socket or a ring."""
from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("netagent.intercept")
READ_CHUNK = 4 << 20
PUNCH_EVERY = 1 << 20          # give read bytes back to the filesystem once this many gathered
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)


def resume_point(saved: dict[str, int], mark: int | None, committed: dict[str, int],
                 log_size: int | None) -> tuple[dict[str, int], int | None]:
    """Pure: where to go on reading, and the size to cut the request log back
    to (None: leave it), after a stop at any instruction. Each batch is written
    to the log, then committed with its events and how far it read
    (`committed`, in state.db), then saved here with the log's size (`mark`).
    Committed ahead of saved: only the save was lost (the log has the batch).
    Else a log longer than the mark has lines whose events were not committed:
    cut them, they are read again."""
    resume = {f: max(saved.get(f, 0), committed.get(f, 0)) for f in saved.keys() | committed.keys()}
    if resume == {f: saved.get(f, 0) for f in resume} and mark is not None and log_size is not None \
            and log_size > mark:
        return resume, mark
    return resume, None


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    """The request records of complete lines (HAProxy's own notices skipped)."""
    out = []
    for line in data.split(b"\n"):
        text = line.decode(errors="replace").strip()
        if not text.startswith("{"):
            continue      # haproxy's own notices (proxies started or stopped)
        try:
            out.append(json.loads(text))
        except ValueError:
            log.warning("interceptor: unreadable request record (%d bytes)", len(line))
    return out


class RequestTail:
    """Each HAProxy process writes its own file, requests.<generation>.log: it
    clears O_APPEND on its stdout (fcntl F_SETFL O_NONBLOCK at its first log
    line), so a HAProxy taking over from one left by a killed agent (-sf) must
    not share a file with it. A file that is not the newest is removed once
    read to its end and its writer (requests.<generation>.pid) has exited."""

    def __init__(self, directory: Path, on_record: Callable[[dict[str, Any]], None],
                 after_batch: Callable[[dict[str, int]], Awaitable[int | None]] | None = None,
                 every_s: float = 0.1):
        self.dir = directory
        self.offsets_path = directory / "requests.offsets"
        self.on_record = on_record
        # called once a batch's records are handed over, with the offsets past
        # them; returns the request log's size after it (the mark saved with them)
        self.after_batch = after_batch
        self.every_s = every_s
        self.mark: int | None = None
        self.offsets: dict[str, int] = self._saved_offsets()
        self._punched: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("requests.*.log"))

    def open_for_writer(self) -> tuple[int, Path]:
        """A new file for a HAProxy's stdout, and its descriptor (the caller closes its copy)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        gens = [int(p.name.split(".")[1]) for p in self.files() if p.name.split(".")[1].isdigit()]
        path = self.dir / f"requests.{max(gens, default=0) + 1:08d}.log"
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path

    def spawned(self, path: Path, pid: int) -> None:
        """The writer of `path`: its file goes once it has exited and all is read."""
        path.with_suffix(".pid").write_text(f"{pid}\n")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="netagent-request-tail")

    async def stop(self) -> None:
        """Stop tailing, after reading what is there now."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            await self.read_new()

    async def _run(self) -> None:
        while True:
            try:
                await self.read_new()
            except Exception:   # noqa: BLE001 - logged; read again next round from the saved offsets
                log.exception("interceptor: reading the request records failed")
            await asyncio.sleep(self.every_s)

    async def read_new(self) -> int:
        """Hand over every complete line past the saved offsets; the records read."""
        files = self.files()
        count = 0
        for n, path in enumerate(files):
            count += await self._read_file(path)
            if n < len(files) - 1 and self._finished(path):
                path.unlink(missing_ok=True)
                path.with_suffix(".pid").unlink(missing_ok=True)
                self.offsets.pop(path.name, None)
                self._punched.pop(path.name, None)
                self._save_offsets()
        return count

    async def _read_file(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        count = 0
        try:
            while True:
                offset = self.offsets.get(path.name, 0)
                size = os.fstat(fd).st_size
                if size <= offset:
                    return count
                data = os.pread(fd, min(READ_CHUNK, size - offset), offset)
                end = data.rfind(b"\n") + 1
                if end == 0:
                    return count       # a line still being written
                records = parse_lines(data[:end])
                for record in records:
                    self.on_record(record)
                read_to = {**self.offsets, path.name: offset + end}
                if records and self.after_batch is not None:
                    self.mark = await self.after_batch(read_to)
                self.offsets[path.name] = offset + end
                count += len(records)
                self._save_offsets()
                if offset + end - self._punched.get(path.name, 0) >= PUNCH_EVERY:
                    self._punch(fd, path, offset + end)
        finally:
            os.close(fd)

    def _finished(self, path: Path) -> bool:
        """Read to its end, and its writer gone."""
        try:
            if os.stat(path).st_size > self.offsets.get(path.name, 0):
                return False
            pid = int(path.with_suffix(".pid").read_text())
        except (OSError, ValueError):
            return True     # no writer on record: it died before the agent noted it
        try:
            return b"haproxy" not in open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            return True

    def recover(self, committed: dict[str, int], log_path: Path | None) -> None:
        """At start, before reading: resume_point applied (the log cut if need be)."""
        size = log_path.stat().st_size if log_path is not None and log_path.exists() else None
        self.offsets, cut = resume_point(self.offsets, self.mark, committed, size)
        if cut is not None and log_path is not None:
            log.info("interceptor: %d bytes of request log whose records were not committed are read again",
                     (size or 0) - cut)
            os.truncate(log_path, cut)
        self.mark = cut if cut is not None else size
        self._save_offsets()

    def _saved_offsets(self) -> dict[str, int]:
        try:
            data = json.loads(self.offsets_path.read_text())
            self.mark = data.get("mark")
            return {str(k): int(v) for k, v in data["offsets"].items()}
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            return {}

    def _save_offsets(self) -> None:
        tmp = self.offsets_path.with_name(self.offsets_path.name + ".tmp")
        tmp.write_text(json.dumps({"offsets": self.offsets, "mark": self.mark}, sort_keys=True))
        os.replace(tmp, self.offsets_path)

    def _punch(self, fd: int, path: Path, offset: int) -> None:
        upto = offset & ~4095      # whole blocks only
        if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, upto) != 0:
            log.warning("interceptor: could not free the read request records (%s); %s grows",
                        os.strerror(ctypes.get_errno()), path)
        self._punched[path.name] = offset    # tried: not again before another PUNCH_EVERY

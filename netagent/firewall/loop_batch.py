"""The committer's element batch sent from the event loop itself, on a netlink
socket made in the host netns (a socket keeps the netns it was made in).

Why: the host thread's transaction cost two thread hops per commit (loop ->
host thread -> loop), and under churn the host thread waited for the GIL
behind the build, clean and reading threads (docs/history/performance-log.md,
"Stalls over 5 ms under churn"). The kernel handles a batch inside send(2)
(~0.1-0.5 ms for a few elements), so every answer is queued when it returns
and the loop never waits on the socket.

It only takes the easy case and hands every other one back (None: the caller
uses the host thread's driver, which does the rest): no set shapes read yet
(or dropped after a refused batch), a change the batch does not encode, the
generation watch's lock held by another thread (a drift check's dumps, the
cleaner's commit): the loop never blocks on a lock.
"""
from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Sequence

from ..errors import Unavailable
from . import element_batch as eb
from . import elements as el
from . import generation
from .nlsock import NETLINK_CAP_ACK, NETLINK_NETFILTER, SOL_NETLINK

ANSWER_TIMEOUT_S = 5.0   # never reached in practice: the answers are queued by the send


class LoopBatcher:
    """Make on the host thread (`NetlinkHostTable.loop_batcher`); use on the loop."""

    def __init__(self, driver):  # type: ignore[no-untyped-def]  # a NetlinkHostTable
        self.driver = driver
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setblocking(False)
        self.seq = 0
        self.sent = 0            # batches sent from the loop
        self.handed_back = 0     # ... and left to the host thread

    def apply(self, ops: Sequence[el.Op]) -> float | None:
        """Send `ops` as one batch now; the seconds it took, or None if it was
        not sent (the caller applies them on the host thread). Unavailable if
        the kernel refused it (nothing changed)."""
        shapes = self.driver.shapes
        watch = self.driver.watch
        if shapes is None or watch is None:
            return self._hand_back()
        try:
            batch = eb.encode("inet", self.driver.table, shapes, eb.changes(ops), self._next(0))
        except eb.Unencodable:
            return self._hand_back()
        if len(batch.data) > eb.MAX_BATCH_BYTES or not watch.lock.acquire(blocking=False):
            return self._hand_back()
        started = time.perf_counter()
        try:
            batch = eb.renumber(batch, self._next(batch.last_seq - batch.first_seq + 1))
            self._ask(batch.data, eb.reader(batch))
            seq = self._next(1)
            watch.own_commit(self._ask(generation.request(seq), generation.answer, seq))
        except eb.BatchError as exc:
            self.driver.shapes = None   # the table may not be what we read
            raise Unavailable(str(exc)) from exc
        except OSError as exc:
            self.driver.shapes = None
            raise Unavailable(f"sending an nftables element batch: {exc}") from exc
        finally:
            watch.lock.release()
        self.sent += 1
        return time.perf_counter() - started

    def _hand_back(self) -> None:
        self.handed_back += 1
        return None

    def _next(self, count: int) -> int:
        """The first of `count` + 1 new sequence numbers."""
        first = self.seq + 1
        self.seq += count + 1
        if self.seq > 0x7FFF0000:
            first, self.seq = 1, count + 1
        return first

    def _ask(self, request: bytes, answer, seq: int | None = None):  # type: ignore[no-untyped-def]
        self.sock.sendto(request, (0, 0))
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OSError(errno.ETIMEDOUT, "no answer from nf_tables") from None
                select.select([self.sock], [], [], left)
                continue
            found = answer(data, seq if seq is not None else 0)
            if found is not None:
                return found

    def close(self) -> None:
        self.sock.close()

"""One netfilter netlink socket per thread, kept open, for the small nftables
requests (GETGEN, GETTABLE, GETSETELEM) and dumps (GETOBJ, GETSETELEM).

Why kept open: closing a bound NETLINK_NETFILTER socket runs nf_tables'
NETLINK_URELEASE hook, which takes the netns' commit mutex and waits for the
previous transaction's destroy work (an RCU grace period). Measured here: a
GETGEN on a fresh socket right after a commit took 14 ms, on a kept socket
20 us; and every nft transaction of the netns waits meanwhile
(docs/history/performance-log.md, "Closing netlink sockets"). A socket belongs to the
netns it was made in, so the cache is keyed by the thread's current netns.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from .nfnetlink import Dump, dump_reader

NETLINK_NETFILTER = 12
SOL_NETLINK, NETLINK_CAP_ACK = 270, 10
# A dump takes one recv per 32 KiB datagram (the kernel's cap; 2,000 set
# elements: 4), and a commit between two of them cuts it. At ~19 commits/s,
# 171 of 3,762 set dumps were read twice, none more. A flat-out commit loop
# (~1,500/s) can outlast any bound: 36 of 90 went through at once, one took 102.
DUMP_TRIES = 32
T = TypeVar("T")

_local = threading.local()


def _netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _socket() -> tuple[socket.socket, int]:
    ino = _netns_inode()
    cached = getattr(_local, "sock", None)
    if cached is not None and cached[1] == ino:
        return cached[0], ino
    if cached is not None:
        cached[0].close()   # the thread moved netns for good (rare): one close
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    # errors without a copy of the request: a refused element batch answers
    # each refused message, and their copies could overflow the receive buffer
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.settimeout(5)
    _local.sock, _local.seq = (sock, ino), 0
    return sock, ino


def ask(request: Callable[[int], bytes], answer: Callable[[bytes, int], T | None], count: int = 1) -> T:
    """Send request(seq) on this thread's socket and read until answer(data, seq)
    is not None; `count` messages numbered from seq (a batch). A failure drops
    the socket (a late reply must not be read as the next request's)."""
    sock, _ = _socket()
    seq = (_local.seq + 1) & 0x7FFFFFFF or 1
    if seq + count > 0x7FFFFFFF:
        seq = 1
    _local.seq = seq + count - 1
    try:
        sock.sendto(request(seq), (0, 0))
        while True:
            found = answer(sock.recv(65536), seq)
            if found is not None:
                return found
    except BaseException:
        drop()
        raise


def dump(request: Callable[[int], bytes], kind: int, what: str, tries: int = DUMP_TRIES) -> list[bytes]:
    """The attributes of each `kind` message of a whole dump ([]: ENOENT).
    One a commit interrupted is started over, up to `tries` times, then OSError."""
    complete, bodies = dump_or_cut(request, kind, what, tries)
    if not complete:
        raise OSError(errno.EAGAIN, f"{what}: the dump was interrupted by commits {tries} times in a row")
    return bodies


def dump_or_cut(request: Callable[[int], bytes], kind: int, what: str, tries: int) -> Dump:
    """(complete, attributes of each `kind` message): a whole dump, started
    over up to `tries` times when a commit cuts it; then the last cut one."""
    complete, bodies = False, []
    for _ in range(max(1, tries)):
        complete, bodies = ask(request, dump_reader(kind, what))
        if complete:
            break
    return complete, bodies


def drop() -> None:
    """Close this thread's socket (the next request makes a new one)."""
    cached = getattr(_local, "sock", None)
    _local.sock = None
    if cached is not None:
        cached[0].close()

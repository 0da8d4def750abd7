"""The nftables ruleset generation: a per-netns counter the kernel bumps on
every committed transaction (NFT_MSG_GETGEN). The ruleset watcher reads it
instead of listing the table each interval: libnftables fills its cache with
every set element before any listing, about 65 ms a check at 2,000 sandboxes
(docs/history/performance-log.md, "Ruleset watch"). Building and reading the messages is
pure; read_generation is the one call that does I/O, in the calling thread's netns.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import threading

from . import nlsock

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN, NFT_MSG_GETGEN = 15, 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2

# shared with firewall/table_probe.py
_HEADER = struct.Struct("=IHHII")   # nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")      # nfgenmsg: family, version, res_id


def request(seq: int = 1) -> bytes:
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
    kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def answer(data: bytes, seq: int = 1) -> int | None:
    """The generation in the kernel's reply to `request(seq)`; None if this
    datagram does not hold it; OSError for an error reply."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, "malformed netlink reply")
        end = offset + length
        if msg_seq == seq and kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
            raise OSError(-code, f"nft GETGEN: {os.strerror(-code)}")
        if msg_seq == seq and kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
            attr = offset + _HEADER.size + _NFGEN.size
            while attr + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, attr)
                if alen < 4:
                    break
                if atype & 0x3FFF == NFTA_GEN_ID and alen >= 8:
                    return int(struct.unpack_from("!I", data, attr + 4)[0])
                attr += (alen + 3) & ~3
            raise OSError(errno.EPROTO, "NEWGEN reply without a generation id")
        offset += (length + 3) & ~3
    return None


def read_generation() -> int:
    """The ruleset generation of the calling thread's netns (on the thread's
    kept socket: firewall/nlsock.py says why)."""
    return nlsock.ask(request, answer)


class GenerationWatch:
    """Which generation of the host netns' ruleset was last seen to hold our
    rules. Our own commits run under `lock` and record the generation they
    made; `verified` advances over every run of our own generations, so any
    other commit leaves it behind and the watcher's next check lists the table.

    Our generations are kept, not only the next one: a listing takes tens of
    ms at 2,000 sandboxes, and our commits made during it come before the
    listing's generation is known. Dropping them kept the watcher listing
    back to back under steady churn (profiled: docs/history/performance-log.md,
    "Closing netlink sockets")."""

    KEEP = 4096   # our generations remembered ahead of `verified`

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.verified: int | None = None
        self._ours: set[int] = set()

    def own_commit(self, generation: int) -> None:
        """Call under `lock`, with the generation read just after our commit
        (if another commit slipped in between, ours stays unrecorded: a gap,
        so the table is listed, never trusted wrongly)."""
        self._ours.add(generation)
        self._advance()

    def listed(self, generation: int) -> None:
        """Call under `lock`: the table held our rules at `generation`
        (read before the listing, so never ahead of it)."""
        self.verified = generation
        self._advance()

    def _advance(self) -> None:
        if self.verified is not None:
            while self.verified + 1 in self._ours:
                self.verified += 1
            self._ours = {g for g in self._ours if g > self.verified} if len(self._ours) > 64 else self._ours
            self._ours.discard(self.verified)
        if len(self._ours) > self.KEEP:
            self._ours = set(sorted(self._ours)[-self.KEEP:])

    def unchanged(self, generation: int | None) -> bool:
        return generation is not None and generation == self.verified

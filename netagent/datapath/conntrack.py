"""Conntrack flushes over raw ctnetlink: one IPCTNL_MSG_CT_DELETE without a
tuple (a flush), optionally filtered by mark. The message is a few bytes of
struct.pack; pyroute2's NFCTSocket built it through its Python request layer
and, for the slot flush, a new socket with its own event loop per call:
Python holding the GIL that the API loop needs, 20 times a second under
churn (docs/history/performance-log.md, "Sustained churn"). Building and reading the
messages is pure; `flush_mark` and `flush_all` do the I/O.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import threading

from ..firewall import nlsock
from ..firewall.generation import _HEADER, _NFGEN
from ..firewall.nfnetlink import NETLINK_NETFILTER, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, attr

NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE = 1, 2
CTA_MARK, CTA_MARK_MASK = 8, 21


def flush_request(mark: int | None = None, mask: int = 0xFFFFFFFF, seq: int = 1) -> bytes:
    """Delete every entry (of every family) of the netns, or those whose
    mark & mask == mark. ValueError for a mark or mask outside 32 bits."""
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, 0)
    if mark is not None:
        if not (0 <= mark <= 0xFFFFFFFF and 0 <= mask <= 0xFFFFFFFF):
            raise ValueError(f"conntrack mark/mask out of 32 bits: {mark:#x}/{mask:#x}")
        body += attr(CTA_MARK, struct.pack("!I", mark)) + attr(CTA_MARK_MASK, struct.pack("!I", mask))
    kind = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def acked(data: bytes, seq: int = 1) -> bool | None:
    """True once the kernel acked request `seq`, None to read on; OSError for an error."""
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, pos)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, "malformed netlink reply")
        if msg_seq == seq and kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, pos + _HEADER.size)
            if code:
                raise OSError(-code, f"conntrack flush: {os.strerror(-code)}")
            return True
        pos += (length + 3) & ~3
    return None


def flush_mark(mark: int, mask: int = 0xFFFFFFFF) -> None:
    """Delete every entry whose mark matches under `mask`, in the calling
    thread's netns. The kernel walks its whole (global) conntrack hash for
    this: ~13 ms for 262,144 buckets here, whatever the number of entries.
    On the thread's kept netfilter socket: closing one waits for nf_tables'
    commit mutex and an RCU grace period (firewall/nlsock.py), and would
    hold up the host's nft commits."""
    flush_request(mark, mask)   # bad input refused before any I/O
    nlsock.ask(lambda seq: flush_request(mark, mask, seq), acked)


def flush_all() -> None:
    """Delete every entry in the calling thread's netns (a slot's own table).
    A socket of its own: the thread is only visiting the slot's netns
    (nlsock's kept socket belongs to the thread's home netns)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as sock:
        sock.settimeout(5)
        sock.sendto(flush_request(), (0, 0))
        while acked(sock.recv(65536)) is None:
            pass


def lower_thread_priority(nice: int = 10) -> None:
    """Make the calling thread yield the CPU to the API and nft threads (nice is
    per thread on Linux; kernel work done in its syscalls is charged to it)."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)

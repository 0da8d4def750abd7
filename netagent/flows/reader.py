"""Conntrack I/O for the flow record: the destroy-event socket, a dump of the
live entries, and the sysctls that make the kernel count. Each socket must
be made on a thread in the host netns (a socket keeps the netns it was made
in); reading it may then happen on any thread."""
from __future__ import annotations

import errno
import socket
import struct

from .. import netns
from ..firewall.nfnetlink import NETLINK_NETFILTER, dump_reader
from . import codec

# The kernel counts bytes and packets per entry, and stamps its start and end,
# only with these on in the netns, for entries created after they were set.
SYSCTLS = (("net.netfilter.nf_conntrack_acct", "1"), ("net.netfilter.nf_conntrack_timestamp", "1"))
RCVBUF = 32 << 20   # destroy events queued while the reader is busy (~1 KiB of buffer each)
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5


def enable_accounting() -> None:
    """Call on a thread in the host netns."""
    for key, value in SYSCTLS:
        netns.write_sysctl(key, value)


def open_events() -> socket.socket:
    """A socket subscribed to the netns' conntrack new and destroy events. Call
    on a host-netns thread. A full buffer raises ENOBUFS on the next read
    (counted: those flows' destroy events are lost; the next start finds them
    gone from the live set)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)   # SO_RCVBUFFORCE: above rmem_max (root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((0, 1 << (codec.NFNLGRP_CONNTRACK_NEW - 1) | 1 << (codec.NFNLGRP_CONNTRACK_DESTROY - 1)))
    sock.settimeout(0.5)
    return sock


def open_dumper() -> socket.socket:
    """A socket for dumps of the live entries. Call on a host-netns thread."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.settimeout(10)
    return sock


def read_events(sock: socket.socket) -> list[tuple[bool, codec.CtEntry]]:
    """(destroyed, entry) of each event of one datagram, in order ([] on a read timeout)."""
    try:
        data = sock.recv(1 << 20)
    except TimeoutError:
        return []
    out = []
    pos = 0
    while pos + 20 <= len(data):
        length, kind = struct.unpack_from("=IH", data, pos)
        if length < 20:
            break
        if kind in (codec.MSG_NEW, codec.MSG_DESTROY) and (e := codec.parse_entry(data[pos + 20:pos + length])):
            out.append((kind == codec.MSG_DESTROY, e))
        pos += (length + 3) & ~3
    return out


def reap(sock: socket.socket, seq: int) -> None:
    """Ask for a dump and drop it unread: walking the table, the kernel deletes
    the expired entries it meets, so their destroy events come now rather
    than at its next garbage-collection pass. Costs the kernel's walk, no parsing."""
    sock.sendto(codec.dump_request(seq), (0, 0))
    answer = dump_reader(-1, "conntrack reap")
    while answer(sock.recv(1 << 20), seq) is None:
        pass


def dump(sock: socket.socket, seq: int, tries: int = 8) -> list[bytes]:
    """Every live IPv4 entry of the socket's netns, unparsed (codec.parse_entry
    each: the caller may stop early). A dump the kernel marks interrupted
    (entries moved while it walked) is read again."""
    for _ in range(tries):
        sock.sendto(codec.dump_request(seq), (0, 0))
        answer = dump_reader(codec.MSG_NEW, "conntrack dump")
        while (found := answer(sock.recv(1 << 20), seq)) is None:
            pass
        complete, bodies = found
        if complete:
            return bodies
        seq += 1
    raise OSError(errno.EAGAIN, f"conntrack dump interrupted {tries} times in a row")

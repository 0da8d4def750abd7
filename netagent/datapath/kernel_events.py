"""Kernel change notifications for continuous reconcile.

Two netlink sockets in the host netns with NETLINK_LISTEN_ALL_NSID hear link,
address and route changes (rtnetlink) and nft table changes (nfnetlink) in the
host netns and in every slot netns that has an id there (the veth pair gives
each slot one). A quiet host costs nothing; a change names its netns id, or
its host interface. Parsing is pure; sockets must be made on a host-netns
thread."""
from __future__ import annotations

import ctypes
import socket
import struct
import sys
from dataclasses import dataclass

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_LISTEN_ALL_NSID = 8
NETLINK_NETFILTER = 12
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x10, 0x40
NFNLGRP_NFTABLES = 7
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
IFLA_IFNAME = 3
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE = 2, 5, 8
SO_ATTACH_FILTER = 26
NLMSG_HDR = struct.Struct("=IHHII")
RCVBUF = 4 << 20


@dataclass(frozen=True)
class Notice:
    nsid: int | None          # the netns it happened in (None: the host netns)
    ifname: str | None = None  # link messages: the interface
    ifindex: int | None = None  # link and address messages: the interface index
    rtnetlink: bool = True     # False: an nft change


def open_sockets() -> list[socket.socket]:
    """rtnetlink and nfnetlink listeners (non-blocking), in the calling thread's netns."""
    rt = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
    nf = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                       NETLINK_NETFILTER)
    try:
        rt.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE))
        nf.bind((0, 0))
        nf.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        # Only deletions reach us: the host table's element churn (every
        # allocate) is filtered in the kernel and costs the agent nothing.
        accept_types(nf, [(NFNL_SUBSYS_NFTABLES << 8) | m for m in (NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN,
                                                                    NFT_MSG_DELRULE)])
        for s in (rt, nf):
            s.setsockopt(SOL_NETLINK, NETLINK_LISTEN_ALL_NSID, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    except OSError:
        rt.close()
        nf.close()
        raise
    return [rt, nf]


def accept_types(sock: socket.socket, types: list[int]) -> None:
    """A classic BPF filter: pass netlink messages of these types, drop the rest."""
    ld, jeq, ret = 0x28, 0x15, 0x06            # BPF_LD|H|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    prog = [(ld, 0, 0, 4)]                      # A = nlmsg_type, read in network order...
    for i, t in enumerate(types):               # ...so compare with the host-order bytes swapped
        swapped = int.from_bytes(t.to_bytes(2, sys.byteorder), "big")
        prog.append((jeq, len(types) - i, 0, swapped))
    prog += [(ret, 0, 0, 0), (ret, 0, 0, 0xFFFF)]
    code = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HP", len(prog), ctypes.addressof(buf))   # struct sock_fprog, native layout
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def receive(sock: socket.socket) -> tuple[bytes, int | None]:
    """One datagram and the netns id it came from (BlockingIOError when drained)."""
    data, anc, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(4))
    nsid = next((struct.unpack("=i", d[:4])[0] for lvl, kind, d in anc
                 if lvl == SOL_NETLINK and kind == NETLINK_LISTEN_ALL_NSID), None)
    return data, nsid


def parse(data: bytes, nsid: int | None, rtnetlink: bool) -> list[Notice]:
    out: list[Notice] = []
    pos = 0
    while pos + NLMSG_HDR.size <= len(data):
        length, kind, _, _, _ = NLMSG_HDR.unpack_from(data, pos)
        if length < NLMSG_HDR.size:
            break
        body = data[pos + NLMSG_HDR.size:pos + length]
        if rtnetlink and kind in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= 16:
            index = struct.unpack_from("=i", body, 4)[0]
            out.append(Notice(nsid, _ifname(body[16:]), index))
        elif rtnetlink and kind in (RTM_NEWADDR, RTM_DELADDR) and len(body) >= 8:
            out.append(Notice(nsid, None, struct.unpack_from("=I", body, 4)[0]))
        else:
            out.append(Notice(nsid, rtnetlink=rtnetlink))
        pos += (length + 3) & ~3
    return out


def _ifname(attrs: bytes) -> str | None:
    pos = 0
    while pos + 4 <= len(attrs):
        size, kind = struct.unpack_from("=HH", attrs, pos)
        if size < 4:
            return None
        if kind == IFLA_IFNAME:
            return attrs[pos + 4:pos + size].split(b"\0", 1)[0].decode(errors="replace")
        pos += (size + 3) & ~3
    return None

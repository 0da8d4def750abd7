"""Raw rtnetlink for the slot build: message builders (pure bytes) and one
socket that sends a batch of requests in a single send(2) and checks every ack.

pyroute2 spends most of a build in its Python request layer (its own event
loop per call) while holding the GIL the API loop needs; these builders are
a few struct.pack calls, and the kernel handles the whole batch in one
syscall, in order (a later request may rely on an earlier one, e.g. a route
on a device brought up just before it). The kernel processes every message
of a batch even after one fails, so each ack is checked.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWNEIGH = 20, 24, 28
RTM_DELQDISC = 37
TC_H_ROOT = 0xFFFFFFFF
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_LINK_NETNSID = 1, 3, 4, 18, 28, 37
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_GATEWAY, RTA_OIF = 5, 4
RTN_UNICAST, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN = 1, 3, 0, 254
RTNH_F_ONLINK = 4
NLA_F_NESTED = 0x8000
NDA_DST, NDA_LLADDR, NUD_PERMANENT = 1, 2, 0x80

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBi")
_RTMSG = struct.Struct("=BBBBBBBBI")
_TCMSG = struct.Struct("=BxxxiIII")   # family, ifindex, handle, parent, info
_NDMSG = struct.Struct("=BxxxiHBB")    # family, ifindex, state, flags, type


def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _name(name: str) -> bytes:
    return nla(IFLA_IFNAME, name.encode() + b"\0")


@dataclass(frozen=True)
class Request:
    """One rtnetlink request: type, extra flags, body (without the header)."""
    kind: int
    flags: int
    body: bytes
    what: str   # for errors: "add address 10.0.0.1/31 on ifindex 4"

    def encode(self, seq: int) -> bytes:
        flags = NLM_F_REQUEST | NLM_F_ACK | self.flags
        return _NLMSGHDR.pack(16 + len(self.body), self.kind, flags, seq, 0) + self.body


def link_up(index: int) -> Request:
    return Request(RTM_NEWLINK, 0, _ifinfo(index, IFF_UP, IFF_UP), f"set ifindex {index} up")


def link_set(index: int, mac: str | None = None, mtu: int | None = None, up: bool = False) -> Request:
    attrs = b""
    if mac is not None:
        attrs += nla(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
    if mtu is not None:
        attrs += nla(IFLA_MTU, struct.pack("=I", mtu))
    flags = IFF_UP if up else 0
    return Request(RTM_NEWLINK, 0, _ifinfo(index, flags, flags) + attrs, f"set ifindex {index}")


def _mac(mac: str | None) -> bytes:
    return nla(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", ""))) if mac else b""


def veth_add(name: str, mtu: int, peer: str, peer_netns_fd: int, index: int = 0,
             mac: str | None = None, peer_mac: str | None = None) -> Request:
    """A veth pair here (with this ifindex if not 0, so later requests of the
    same batch can name it), its peer created directly in the netns of `peer_netns_fd`;
    each end with the given MAC (else a random one)."""
    peer_msg = _ifinfo() + _name(peer) + nla(IFLA_NET_NS_FD, struct.pack("=I", peer_netns_fd)) \
        + nla(IFLA_MTU, struct.pack("=I", mtu)) + _mac(peer_mac)
    info = nla(IFLA_INFO_KIND, b"veth") + nla(IFLA_INFO_DATA | NLA_F_NESTED, nla(VETH_INFO_PEER, peer_msg))
    body = _ifinfo(index) + _name(name) + nla(IFLA_MTU, struct.pack("=I", mtu)) + _mac(mac) \
        + nla(IFLA_LINKINFO | NLA_F_NESTED, info)
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"add veth {name} (peer {peer})")


def link_del(name: str) -> Request:
    return Request(RTM_DELLINK, 0, _ifinfo() + _name(name), f"delete link {name}")


def get_link(index: int) -> Request:
    return Request(RTM_GETLINK, 0, _ifinfo(index), f"get ifindex {index}")


def addr_add(index: int, address: str, prefixlen: int) -> Request:
    raw = ipaddress.IPv4Address(address).packed
    body = _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, 0, index) + nla(IFA_LOCAL, raw) + nla(IFA_ADDRESS, raw)
    what = f"add address {address}/{prefixlen} on ifindex {index}"
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, what)


def default_route_onlink(gateway: str, oif: int) -> Request:
    body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST,
                       RTNH_F_ONLINK) + nla(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed) \
        + nla(RTA_OIF, struct.pack("=I", oif))
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"add default via {gateway} dev ifindex {oif}")


def neigh_pin(index: int, address: str, mac: str) -> Request:
    """A permanent neighbour entry (created or replaced): no ARP for it, and the
    kernel does not count it against the neighbour table's shared gc_thresh3."""
    body = _NDMSG.pack(socket.AF_INET, index, NUD_PERMANENT, 0, 0) \
        + nla(NDA_DST, ipaddress.IPv4Address(address).packed) + _mac_attr(NDA_LLADDR, mac)
    return Request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, f"pin neighbour {address} on ifindex {index}")


def _mac_attr(kind: int, mac: str) -> bytes:
    return nla(kind, bytes.fromhex(mac.replace(":", "")))


def qdisc_del_root(index: int) -> Request:
    """Delete the link's root qdisc (the kernel puts its default back)."""
    return Request(RTM_DELQDISC, 0, _TCMSG.pack(socket.AF_UNSPEC, index, 0, TC_H_ROOT, 0),
                   f"delete the root qdisc of ifindex {index}")


def link_attr(message: bytes, kind: int) -> bytes | None:
    """One attribute of an RTM_NEWLINK message (header included), or None."""
    pos = 16 + _IFINFOMSG.size
    while pos + 4 <= len(message):
        length, akind = struct.unpack_from("=HH", message, pos)
        if length < 4:
            break
        if akind & ~NLA_F_NESTED == kind:
            return message[pos + 4:pos + length]
        pos += (length + 3) & ~3
    return None


class Rtnl:
    """An rtnetlink socket in the netns of the thread that opened it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, requests: Sequence[Request], ok_errors: frozenset[int] = frozenset()) -> list[bytes]:
        """Send all requests in one batch; return the non-ack replies (e.g. a
        link for get_link). Raises OSError for the first request the kernel
        refused with an error not in `ok_errors`, after reading every reply."""
        first = self._seq + 1
        self._seq += len(requests)
        self.sock.send(b"".join(r.encode(first + i) for i, r in enumerate(requests)))
        pending = set(range(first, first + len(requests)))
        replies: list[bytes] = []
        failure: OSError | None = None
        while pending:
            data = self.sock.recv(1 << 16)
            pos = 0
            while pos + 16 <= len(data):
                length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, pos)
                if length < 16:
                    raise OSError(errno.EPROTO, "malformed netlink reply")
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, pos + 16)[0]
                    pending.discard(seq)
                    if code and code not in ok_errors and failure is None and first <= seq < first + len(requests):
                        what = requests[seq - first].what
                        failure = OSError(code, f"rtnetlink {what}: {os.strerror(code)}")
                elif kind != NLMSG_DONE:
                    replies.append(data[pos:pos + length])
                pos += (length + 3) & ~3
        if failure:
            raise failure
        return replies

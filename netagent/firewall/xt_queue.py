"""Add the one rule nft cannot write on kernels built without nft_queue: an
xtables NFQUEUE target (through nft_compat), over raw nfnetlink, as the last
rule of a chain of an `ip` table (nft_compat takes no `inet` family). Message
building is pure; `add_queue_rule` runs on a thread in the host netns."""
from __future__ import annotations

import socket
import struct

from .nfnetlink import NETLINK_NETFILTER, NLM_F_ACK, NLM_F_REQUEST, attr, check_ack

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWRULE = 6
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2
NFTA_TARGET_NAME, NFTA_TARGET_REV, NFTA_TARGET_INFO = 1, 2, 3
NLA_F_NESTED = 0x8000
NLM_F_CREATE, NLM_F_APPEND = 0x400, 0x800
NFQUEUE_REVISION = 3              # struct xt_NFQ_info_v3 {u16 queuenum, queues_total, flags}


def _nest(kind: int, *items: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(items))


def _msg(kind: int, flags: int, seq: int, family: int, res_id: int, body: bytes) -> bytes:
    data = struct.pack("=BBH", family, 0, socket.htons(res_id)) + body
    return struct.pack("=IHHII", 16 + len(data), kind, flags, seq, 0) + data


def queue_rule_batch(table: str, chain: str, queue: int) -> bytes:
    """One batch appending `queue num <queue>` (no bypass: with no reader, the
    packets wait and then drop; the check fails closed)."""
    info = struct.pack("=HHH", queue, 1, 0) + b"\0\0"          # XT_ALIGN'd to 8
    target = _nest(NFTA_EXPR_DATA, attr(NFTA_TARGET_NAME, b"NFQUEUE\0"),
                   attr(NFTA_TARGET_REV, struct.pack("!I", NFQUEUE_REVISION)), attr(NFTA_TARGET_INFO, info))
    exprs = _nest(NFTA_RULE_EXPRESSIONS, _nest(NFTA_LIST_ELEM, attr(NFTA_EXPR_NAME, b"target\0"), target))
    rule = _msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND, 2, socket.AF_INET, 0,
                attr(NFTA_RULE_TABLE, table.encode() + b"\0") + attr(NFTA_RULE_CHAIN, chain.encode() + b"\0")
                + exprs)
    return (_msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, b"") + rule
            + _msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 3, socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES, b""))


def add_queue_rule(table: str, chain: str, queue: int) -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        sock.send(queue_rule_batch(table, chain, queue))
        check_ack(sock, f"queue rule in {table}/{chain}")

"""The shard rules for paused sandboxes (docs/edge.md, "Paused sandboxes"): pure text.

Without wake (or without a waker), a paused sandbox is answered 503 + Retry-After.
With it, the request is held by `wake.lua`, which asks the control plane's waker
and, once the sandbox is live, gives the request its new route so HAProxy's own
rules carry it to the guest (any protocol HAProxy speaks to a guest, gRPC included).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

LUA = Path(__file__).with_name("wake.lua")

Answer = Callable[..., str]    # haconfig._answer


def lua_load(waker: str) -> str:
    return f"    lua-load {LUA}" if waker else "    # no waker: no wake on request"


def paused_rules(waker: str, retry_after_s: int, answer: Answer) -> str:
    headers = f"hdr Cache-Control no-store hdr Retry-After {retry_after_s}"
    lines = [answer(503, "Service Unavailable", "sandbox %[var(txn.sid)] is paused",
                    "paused exposed" + (" !wakes" if waker else ""), headers=headers)]
    if waker:
        ip, port = waker.rsplit(":", 1)
        lines += [
            f"    http-request lua.netagent_wake {ip} {port} if wakes exposed",
            "    acl wake_failed_503 var(txn.wake_status) -m str 503",
            "    acl wake_failed_502 var(txn.wake_status) -m str 502",
            answer(503, "Service Unavailable", "%[var(txn.wake_msg)]", "wake_failed_503", headers=headers),
            answer(502, "Bad Gateway", "%[var(txn.wake_msg)]", "wake_failed_502"),
        ]
    return "\n".join(lines)

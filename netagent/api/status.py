"""The message of a gRPC error status, capped to fit what a client accepts (pure).

gRPC sends the message percent-encoded in the `grpc-message` trailer: one byte
per printable ASCII character, three per other byte of its UTF-8. A client's
whole metadata limit is 8 KiB by default, and a trailer over it reaches the
client as RESOURCE_EXHAUSTED instead of the status sent. A failed nft
transaction names every element it held, so its message can be that long.
"""
from __future__ import annotations

MAX_MESSAGE_BYTES = 4096   # encoded; half of the client's default limit leaves room for other metadata


def encoded_size(text: str) -> int:
    """Bytes of `text` once gRPC has percent-encoded it."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode())


def status_message(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """`text`, or its head and how much was cut, within `limit` encoded bytes."""
    if encoded_size(text) <= limit:
        return text
    marker = " [... {} more characters]"
    budget = limit - encoded_size(marker.format(len(text)))
    used = cut = 0
    for char in text:
        used += encoded_size(char)
        if used > budget:
            break
        cut += 1
    return text[:cut] + marker.format(len(text) - cut)

"""How the Python edge rewrites what it forwards (pure): the request's host and
path, the request head sent upstream, and the framing headers a HEAD or 304
answer keeps."""
from __future__ import annotations

import re

from .http1 import (
    BodyFraming,
    Framing,
    Headers,
    HttpError,
    RequestHead,
    ResponseHead,
    encode_request_head,
    parse_content_length,
    strip_hop_by_hop,
)

_ABSOLUTE_FORM = re.compile(r"(?i)https?://([^/?#]*)(.*)")


def host_and_path(head: RequestHead) -> tuple[str | None, str]:
    """The host a request is for and the path to send upstream (an absolute-form
    target's authority is its host)."""
    hosts = head.headers.get_all("host")
    if len(hosts) > 1:
        raise HttpError(400, "more than one Host header")
    host = hosts[0] if hosts else None
    target = head.target
    if target.startswith("/") or (target == "*" and head.method == "OPTIONS"):
        path = target
    elif m := _ABSOLUTE_FORM.fullmatch(target):   # absolute-form: its authority is the host
        host, path = m[1], m[2] or "/"
        if not path.startswith("/"):
            path = "/" + path
    else:
        raise HttpError(400, "malformed request target")
    if head.version >= (1, 1) and not hosts:
        raise HttpError(400, "missing Host header")
    return host, path


def upstream_request(head: RequestHead, framing: BodyFraming, host: str | None, path: str, peer_ip: str,
                     trust_forwarded: bool) -> bytes:
    """The request head sent upstream: hop-by-hop headers dropped, framing and
    Upgrade re-added, X-Forwarded-* set."""
    headers = strip_hop_by_hop(head.headers)
    if host is not None and host != head.headers.get("host"):
        headers.set("Host", host)
    if "trailers" in head.headers.tokens("te"):
        headers.add("TE", "trailers")
    if framing.kind is Framing.LENGTH:
        headers.add("Content-Length", str(framing.length))
    elif framing.kind is Framing.CHUNKED:
        headers.add("Transfer-Encoding", "chunked")
        for value in head.headers.get_all("trailer"):
            headers.add("Trailer", value)
    if upgrade := head.upgrade:
        headers.add("Connection", "Upgrade")
        headers.add("Upgrade", upgrade)
    _add_forwarded(headers, head, host, peer_ip, trust_forwarded)
    return encode_request_head(head.method, path, headers)


def _add_forwarded(headers: Headers, head: RequestHead, host: str | None, peer_ip: str,
                   trust_forwarded: bool) -> None:
    prior = head.headers.get_all("x-forwarded-for") if trust_forwarded else []
    headers.set("X-Forwarded-For", ", ".join([*prior, peer_ip]))
    if not (trust_forwarded and head.headers.get("x-forwarded-host")):
        headers.set("X-Forwarded-Host", host or "")
    if not (trust_forwarded and head.headers.get("x-forwarded-proto")):
        headers.set("X-Forwarded-Proto", "http")


def keep_head_framing(head: RequestHead, response: ResponseHead, headers: Headers) -> None:
    """A HEAD or 304 answer keeps the framing a GET would have had (no body follows)."""
    if not (head.method == "HEAD" or response.status == 304):
        return
    length = parse_content_length(response.headers.get_all("content-length"))
    if length is not None:
        headers.add("Content-Length", str(length))
    elif response.headers.tokens("transfer-encoding") == ["chunked"] and head.version >= (1, 1):
        headers.add("Transfer-Encoding", "chunked")

"""The edge's own answers (400/404/502/504...): JSON for API clients, HTML for browsers."""
from __future__ import annotations

import html
import json
from http import HTTPStatus

from .http1 import Headers, encode_response_head


def _quality(accept: str, media_type: str) -> float:
    """q of `media_type` under `accept`: the most specific matching range wins."""
    main = media_type.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        rng, *params = (p.strip() for p in item.split(";"))
        rng = rng.lower()
        specificity = 2 if rng == media_type else 1 if rng == f"{main}/*" else 0 if rng == "*/*" else -1
        if specificity <= best[0]:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = (specificity, q)
    return best[1]


def wants_json(accept: str | None) -> bool:
    """JSON if the client prefers application/json to text/html, or does not accept HTML.
    No Accept header (anything goes) and ties get HTML."""
    if accept is None or not accept.strip():
        return False
    q_json, q_html = _quality(accept, "application/json"), _quality(accept, "text/html")
    return q_json > q_html or q_html == 0.0


def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_response(status: int, message: str, accept: str | None, *, sandbox_id: str | None = None,
                   port: int | None = None, close: bool = False, head_only: bool = False) -> bytes:
    """A complete response (head and body) from the edge itself."""
    if wants_json(accept):
        body = json.dumps({"sandboxId": sandbox_id, "port": port, "message": message}).encode()
        content_type = "application/json"
    else:
        title = f"{status} {html.escape(reason(status))}"
        body = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n"
                f"<body><h1>{title}</h1>\n<p>{html.escape(message)}</p></body></html>\n").encode()
        content_type = "text/html; charset=utf-8"
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    if close:
        headers.add("Connection", "close")
    return encode_response_head(status, reason(status), headers) + (b"" if head_only else body)

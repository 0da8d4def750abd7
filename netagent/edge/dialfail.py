"""The answer to a failed connect to a sandbox port (docs/edge.md, "No false 502"): pure.

HAProxy answers a failed connect with its own 503. `http-error` rewrites that answer's
body at the time of the failure, from four pieces looked up in a small static map
(`dial.map` in the errors directory) by what the request already holds: the last
probe's opinion (the route's 5th field, "closed" or empty) and whether the client
wants JSON. Nothing is prepared on requests that succeed. `http-after-response` then
sets the status (502 "port N is not open" when the probe said closed too, else 504)
and the HTML content type, keyed on a marker header only HAProxy's own answer carries.
"""
from __future__ import annotations

MAP_NAME = "dial.map"
MARK = "X-Netagent-Dial-Failed"      # on HAProxy's own 503 only (a guest's copy is removed)

_HTML_HEAD = ("<!DOCTYPE html><html><head><meta charset=utf-8><title>{status}</title></head>"
              "<body><h1>{status}</h1><p data-sandbox=\"")


def _pieces(json: bool, closed: bool) -> tuple[str, str, str, str]:
    """The body is piece1 SID piece2 PORT piece3 " " PORT " " piece4. A map value is one
    line whose leading and trailing blanks are not kept, so no piece starts or ends with
    one (the two spaces around the second PORT are in the lf-string itself)."""
    message = "is not open" if closed else "did not accept the connection"
    if json:
        return '{"sandboxId":"', '","port":', ',"message":"port', message + '"}'
    status = "502 Bad Gateway" if closed else "504 Gateway Timeout"
    return _HTML_HEAD.format(status=status), '" data-port="', '">port', message + "</p></body></html>"


def _key(closed: bool, json: bool, piece: int) -> str:
    """What `var(txn.route),concat(|),field(5,|),concat(k,txn.json,pN)` yields."""
    return f"{'closed' if closed else ''}k{'1' if json else ''}p{piece}"


def map_text() -> str:
    lines = []
    for closed in (True, False):
        for json in (True, False):
            for piece, text in enumerate(_pieces(json, closed), start=1):
                lines.append(f"{_key(closed, json, piece)} {text}")
    return "\n".join(lines) + "\n"


def rules(errors_dir: str) -> str:
    """The shard backends' lines for a failed connect."""
    def piece(n: int) -> str:
        return f"%[var(txn.route),concat(|),field(5,|),concat(k,txn.json,p{n}),map({errors_dir}/{MAP_NAME})]"
    body = f"{piece(1)}%[var(txn.sid)]{piece(2)}%[var(txn.port)]{piece(3)} %[var(txn.port)] {piece(4)}"
    mark = f"{{ res.hdr({MARK}) -m found }}"
    return "\n".join([
        "    retries 0      # a refused connect is answered at once, not after a 1 s turn-around",
        f"    http-error status 503 content-type application/json lf-string \"{body}\" "
        f"hdr Cache-Control no-store hdr {MARK} 1",
        f"    http-response del-header {MARK}",
        f"    http-after-response set-status 502 if {mark} probe_closed",
        f"    http-after-response set-status 504 if {mark} !probe_closed",
        f"    http-after-response set-header Content-Type \"text/html; charset=utf-8\" if {mark} !json_answer",
        f"    http-after-response del-header {MARK}",
    ])

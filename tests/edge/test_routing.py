"""Routing: Host and X-Sandbox-* headers to (sandbox id, port), and the error-page choice."""
from __future__ import annotations

import json

import pytest

from netagent.edge.errors import error_response, wants_json
from netagent.edge.routing import RouteError, Router, Target

router = Router("sbx.example.test", shared_host="Edge.Example.Test")


@pytest.mark.parametrize("host, expected", [
    ("3000-abc.sbx.example.test", Target("abc", 3000)),
    ("3000-ABC.SBX.Example.Test", Target("abc", 3000)),
    ("3000-abc.sbx.example.test:8080", Target("abc", 3000)),
    ("3000-abc.sbx.example.test.", Target("abc", 3000)),
    ("8080-my-box-7.sbx.example.test", Target("my-box-7", 8080)),   # split at the FIRST '-'
    ("1-a.sbx.example.test", Target("a", 1)),
    ("65535-a.sbx.example.test", Target("a", 65535)),
])
def test_host_form(host: str, expected: Target) -> None:
    assert router.route(host) == expected


@pytest.mark.parametrize("host", [
    "abc-x.sbx.example.test",        # no port
    "3000.sbx.example.test",         # no id
    "3000-.sbx.example.test",
    "3000-abc-.sbx.example.test",    # DNS labels do not end with '-'
    "3000-a_b.sbx.example.test",     # '_' is not a DNS label character
    "0-abc.sbx.example.test",
    "03000-abc.sbx.example.test",
    "65536-abc.sbx.example.test",
    "3000-abc.other.test",           # wrong domain
    "3000-abc.sbx.example.test.evil",
    "x.3000-abc.sbx.example.test",   # one label only
    "sbx.example.test",
    "3000-" + "a" * 63 + ".sbx.example.test",   # label longer than 63
    "",
    None,
])
def test_bad_hosts(host: str | None) -> None:
    with pytest.raises(RouteError):
        router.route(host)


def test_header_form() -> None:
    assert router.route("edge.example.test", "Sbx_1.A", "8080") == Target("Sbx_1.A", 8080)
    assert router.route("EDGE.example.test:443", " abc ", " 3000 ") == Target("abc", 3000)
    for sid, port in [(None, "80"), ("abc", None), ("-abc", "80"), ("a" * 64, "80"), ("abc", "0"), ("abc", "x1"),
                      ("abc", "70000"), ("a/b", "80")]:
        with pytest.raises(RouteError):
            router.route("edge.example.test", sid, port)


def test_header_form_only_on_the_shared_host() -> None:
    with pytest.raises(RouteError):
        Router("sbx.example.test").route("edge.example.test", "abc", "80")
    # on a sandbox host the headers are ignored
    assert router.route("3000-abc.sbx.example.test", "other", "80") == Target("abc", 3000)


@pytest.mark.parametrize("accept, json_wanted", [
    (None, False),
    ("*/*", False),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
    ("application/json", True),
    ("application/json, text/html;q=0.5", True),
    ("text/html;q=0.5, application/json", True),
    ("application/json;q=0.5, text/html", False),
    ("text/plain", True),           # does not accept HTML
    ("text/*;q=0, */*", True),
    ("application/*", True),
])
def test_json_or_html(accept: str | None, json_wanted: bool) -> None:
    assert wants_json(accept) is json_wanted


def test_error_response_bodies() -> None:
    raw = error_response(502, "port 3000 is not open", "application/json", sandbox_id="abc", port=3000)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert b"Content-Type: application/json" in head and b"Content-Length: %d" % len(body) in head
    assert json.loads(body) == {"sandboxId": "abc", "port": 3000, "message": "port 3000 is not open"}
    raw = error_response(404, "sandbox <x> not found", "text/html", close=True)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"Connection: close" in head and b"text/html" in head
    assert b"&lt;x&gt;" in body and b"<x>" not in body
    assert error_response(404, "m", None, head_only=True).endswith(b"\r\n\r\n")

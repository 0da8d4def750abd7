"""Render the HAProxy config of the edge from its settings: pure text in, text out.

The template (haproxy.cfg.tmpl, beside this file) is the readable whole; this
module only fills in the listeners, the per-shard lookups and the answers.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from importlib import resources
from string import Template

from . import dialfail, domainconfig, tcpconfig, wakeconfig
from .fdlimit import FD_CAP
from .maps import DEFAULT_SHARDS

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")   # an HTTP field / cookie name
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_LISTEN = re.compile(r"(?:\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|\*)?:\d{1,5}")
_PATH = re.compile(r"/[^\s'\"#]*")
_WAKER = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}:\d{1,5}")


@dataclass(frozen=True)
class EdgeSettings:
    domain: str
    map_dir: str                          # holds s00.map ... (the control plane writes them)
    admin_socket: str                     # HAProxy's runtime API socket (level admin)
    errors_dir: str                       # holds 504.http
    http_listen: tuple[str, ...] = ("127.0.0.1:8080",)
    https_listen: tuple[str, ...] = ()
    tls_pem: str = ""                     # certificate chain + key for *.domain, one PEM file
    redirect_to_https: bool = True        # plain HTTP answers 308 to https:// (when TLS is on)
    https_public_port: int = 443          # the port https:// URLs use (redirect target)
    token_header: str = "X-Access-Token"
    token_cookie: str = "netagent-access-token"
    trust_forwarded: bool = False
    url_signing_key: bytes = b""          # HMAC-SHA256 key of signed URLs to private ports ("": off)
    connect_timeout_s: float = 3.0
    request_timeout_s: float = 10.0       # a request head must arrive within this (slowloris)
    shards: int = DEFAULT_SHARDS
    threads: int = 2
    maxconn: int = 0                      # 0: auto, haproxy sizes it from its fd limit (fdlimit.py)
    log_target: str = "stderr"
    log_level: str = "err"
    extra_bind_options: tuple[str, ...] = field(default_factory=tuple)
    waker: str = ""                       # IPv4:PORT of the control plane's waker ("": no wake on request)
    paused_retry_after_s: int = 5         # Retry-After of the 503 for a paused sandbox
    tcp_listen: tuple[str, ...] = ()      # raw TCP over TLS by SNI (tcpconfig.py); needs tls_pem
    certs_dir: str = ""                   # custom domains' certificates and crt-list ("": no custom domains)
    tcp_on_https: bool = False            # the HTTPS listeners route by SNI to HTTPS or raw TCP (tcpconfig.py)

    def validate(self) -> None:
        if not _DOMAIN.fullmatch(self.domain):
            raise ValueError(f"domain {self.domain!r} is not a lowercase DNS name")
        for name in ("map_dir", "admin_socket", "errors_dir"):
            if not _PATH.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} must be an absolute path without spaces or quotes")
        for listen in self.http_listen + self.https_listen:
            if not _LISTEN.fullmatch(listen):
                raise ValueError(f"listen address {listen!r} is not IP:PORT, [IPv6]:PORT or :PORT")
        if (self.https_listen or self.tcp_listen) and not _PATH.fullmatch(self.tls_pem):
            raise ValueError("https and tcp listeners need tls_pem (an absolute path)")
        if self.certs_dir and not (self.https_listen and _PATH.fullmatch(self.certs_dir)):
            raise ValueError("custom domains (certs_dir, an absolute path) need an https listener")
        for listen in self.tcp_listen:
            if not _LISTEN.fullmatch(listen):
                raise ValueError(f"listen address {listen!r} is not IP:PORT, [IPv6]:PORT or :PORT")
        if self.tcp_on_https and not self.https_listen:
            raise ValueError("tcp_on_https needs https listeners")
        if not self.http_listen and not self.https_listen:
            raise ValueError("the edge needs at least one listener")
        for name in ("token_header", "token_cookie"):
            if not _TOKEN.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)!r} is not an HTTP token")
        if self.url_signing_key and len(self.url_signing_key) < 32:
            raise ValueError("url_signing_key must be at least 32 bytes")
        if self.waker and not _WAKER.fullmatch(self.waker):
            raise ValueError(f"waker {self.waker!r} is not IPv4:PORT")
        if not 1 <= self.shards <= 1024:
            raise ValueError("shards must be 1..1024")
        if not 0 <= self.maxconn <= 10_000_000:
            raise ValueError("maxconn must be 0 (auto) or a positive number of connections")
        for name in ("connect_timeout_s", "request_timeout_s"):
            if not 0 < getattr(self, name) <= 60:
                raise ValueError(f"{name} must be in (0, 60]")


def shard_map(map_dir: str, shard: int) -> str:
    return f"{map_dir}/s{shard:03d}.map"


SYNCED_KEY = "edge"


def synced_map(map_dir: str) -> str:
    """The flag map: empty on disk, so a new HAProxy process starts without the flag;
    the control plane adds SYNCED_KEY once it has synced that process."""
    return f"{map_dir}/synced.map"


def _binds(s: EdgeSettings) -> str:
    lines = [f"    bind {addr}" for addr in s.http_listen]
    certs = domainconfig.https_certs(s.tls_pem, s.certs_dir)
    lines += [f"    bind {addr} ssl {certs} alpn h2,http/1.1 strict-sni" for addr in tcpconfig.https_bind_addresses(s)]
    return "\n".join(lines)


def _shard_backends(s: EdgeSettings, answers: dict[str, str]) -> str:
    template = Template(resources.files(__package__).joinpath("haproxy-shard.cfg.tmpl").read_text())
    return "\n".join(template.substitute(shard=i, shards=s.shards, map=shard_map(s.map_dir, i),
                                         synced_map=synced_map(s.map_dir), synced_key=SYNCED_KEY, **answers)
                     for i in range(s.shards))


RETRY_AFTER_S = 1      # the 503 of a process not synced yet: the control plane syncs it within ~1 s

_JSON_IDS = '"sandboxId":"%[var(txn.sid)]","port":%[var(txn.port)]'


def _bodies(status: int, title: str, message: str, with_ids: bool = True) -> tuple[str, str]:
    """The JSON and the HTML body of an edge answer, as HAProxy log-format strings."""
    ids = _JSON_IDS if with_ids else '"sandboxId":null,"port":null'
    json_body = f"{{{ids},\"message\":\"{message}\"}}"
    html_body = (f"<!DOCTYPE html>\\n<html><head><meta charset=utf-8><title>{status} {title}</title></head>\\n"
                 f"<body><h1>{status} {title}</h1>\\n<p>{message}</p></body></html>\\n")
    return json_body, html_body


def _answer(status: int, title: str, message: str, condition: str, with_ids: bool = True,
            headers: str = "hdr Cache-Control no-store") -> str:
    """Two `http-request return` lines: JSON when json_answer, else HTML."""
    json_body, html_body = _bodies(status, title, message, with_ids)
    common = f"http-request return status {status}"
    return (f"    {common} content-type application/json lf-string '{json_body}' {headers} "
            f"if {condition} json_answer\n"
            f"    {common} content-type \"text/html; charset=utf-8\" lf-string \"{html_body}\" {headers} "
            f"if {condition}")


def _answer_400(s: EdgeSettings) -> str:
    bad = "host is not {port}-{sandboxId}." + s.domain
    lines = [_answer(400, "Bad Request", bad, cond, with_ids=False)
             for cond in ("!host_form", "!label_fits", "!port_range", "!one_host")]
    return "\n".join(lines)


def _redirect(s: EdgeSettings) -> str:
    if not (s.https_listen and s.redirect_to_https):
        return "    # plain HTTP is served (no redirect to HTTPS)"
    port = "" if s.https_public_port == 443 else f":{s.https_public_port}"
    return (f"    http-request redirect location https://%[var(txn.host)]{port}%[pathq] code 308 "
            f"if !{{ ssl_fc }}")


def _forwarded(s: EdgeSettings) -> str:
    """X-Forwarded-*: ours replace the client's, unless a trusted proxy in front set them."""
    def unless_sent(name: str) -> str:
        return f" !{{ req.hdr(X-Forwarded-{name}) -m found }}" if s.trust_forwarded else ""
    names = ("For", "Host", "Proto")
    drop = [] if s.trust_forwarded else [f"    http-request del-header X-Forwarded-{h}" for h in names]
    return "\n".join(drop + [
        f"    http-request set-header X-Forwarded-Host %[req.hdr(host,1)] if TRUE{unless_sent('Host')}",
        f"    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}{unless_sent('Proto')}",
        f"    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}{unless_sent('Proto')}",
    ])


SIGNED_URL_PARAMS = ("netagent-expires", "netagent-signature")


def _signed_urls(s: EdgeSettings) -> str:
    """A request to a private port may carry ?netagent-expires=UNIX&netagent-signature=HEX,
    HEX = hmac_sha256(key, "{sandboxId}:{port}:{expires}") (docs/edge.md)."""
    if not s.url_signing_key:
        return "    # signed URLs are off (no url_signing_key)"
    expires, signature = SIGNED_URL_PARAMS
    key = base64.b64encode(s.url_signing_key).decode()
    return "\n".join([
        f"    http-request set-var(txn.sig_exp) url_param({expires}) "
        f"if {{ url_param({expires}) -m reg ^[0-9]{{1,12}}$ }}",
        "    http-request set-var(txn.now) date",
        f"    http-request set-var(txn.sig_key) str({key}) if {{ var(txn.sig_exp) -m found }}",
        "    http-request set-var(txn.sig_msg) var(txn.sid),concat(:,txn.port),concat(:,txn.sig_exp) "
        "if { var(txn.sig_exp) -m found }",
        "    http-request set-var(txn.sig_want) var(txn.sig_msg),hmac(sha256,txn.sig_key),hex,lower "
        "if { var(txn.sig_exp) -m found }",
        f"    http-request set-var(txn.sig_ok) bool(1) if {{ var(txn.sig_exp),sub(txn.now) -m int gt 0 }} "
        f"{{ url_param({signature}),lower,strcmp(txn.sig_want) eq 0 }}",
    ])


def _maxconn(s: EdgeSettings) -> str:
    if s.maxconn:
        return f"maxconn {s.maxconn}"
    return (f"fd-hard-limit {FD_CAP}   # no maxconn: haproxy sizes it from its hard fd limit, "
            f"up to this many fds")


def render(s: EdgeSettings) -> str:
    s.validate()
    template = Template(resources.files(__package__).joinpath("haproxy.cfg.tmpl").read_text())
    not_open = "port %[var(txn.port)] is not open"
    answers = {
        "answer_401": "\n".join(_answer(401, "Unauthorized", "a valid access token is required", cond) for cond in (
            "private !token_ok !signed", "presents_token !known", "presents_token !exposed")),
        # Not synced yet: what the maps lack may only be missing from the files on disk.
        "answer_503": "\n".join(_answer(503, "Service Unavailable", "the edge is loading its routes, retry shortly",
                                         cond, headers=f"hdr Cache-Control no-store hdr Retry-After {RETRY_AFTER_S}")
                                 for cond in ("!known !synced", "!exposed !synced")),
        "answer_404": _answer(404, "Not Found", "sandbox %[var(txn.sid)] not found", "!known"),
        "answer_502": "\n".join(_answer(502, "Bad Gateway", not_open, cond) for cond in ("!exposed", "!routable")),
        "dial_failure": dialfail.rules(s.errors_dir),
        "paused": wakeconfig.paused_rules(s.waker, s.paused_retry_after_s, _answer),
    }
    suffix_regex = "\\." + s.domain.replace(".", "\\.") + "$"
    return template.substitute(
        acme_challenge=domainconfig.challenge_rules(s.map_dir, bool(s.certs_dir)),
        custom_domains=domainconfig.custom_domain_rules(s.map_dir, suffix_regex, bool(s.certs_dir)),
        admin_socket=s.admin_socket, lua_load=wakeconfig.lua_load(s.waker), threads=s.threads,
        maxconn=_maxconn(s), log_target=s.log_target,
        log_level=s.log_level, connect_timeout=f"{int(s.connect_timeout_s * 1000)}ms",
        request_timeout=f"{int(s.request_timeout_s * 1000)}ms", errors_dir=s.errors_dir,
        map_dir=s.map_dir, binds=_binds(s), domain=s.domain, shards=s.shards,
        domain_suffix_regex=suffix_regex,
        redirect=_redirect(s), answer_400=_answer_400(s), token_header=s.token_header,
        token_cookie=s.token_cookie, signed_urls=_signed_urls(s), forwarded=_forwarded(s),
        shard_backends=_shard_backends(s, answers),
    ) + tcpconfig.render(s, lambda shard: shard_map(s.map_dir, shard))


def error_504() -> str:
    """HAProxy's answer when the sandbox port did not accept the connection (its 503)."""
    body = ('{"sandboxId":null,"port":null,"message":"the sandbox port did not accept the connection"}\n')
    return ("HTTP/1.1 504 Gateway Timeout\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}")

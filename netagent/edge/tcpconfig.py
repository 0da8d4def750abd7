"""The raw TCP path of the edge (issue 24 part 3): pure text.

A port exposed in mode "tcp" is served here only (its map key is {sandboxId}/{port}/tcp,
maps.py). The client's SNI names it: `{port}-{sandboxId}.{domain}` for a public port,
`{port}--{token}-{sandboxId}.{domain}` for a private one (the token's SHA-256 must
equal the port's). HAProxy terminates TLS and passes the bytes to node_address:host_port.
Anything else (unknown or paused sandbox, a port not exposed as tcp, a wrong or
missing token) is closed right after the handshake, before a byte reaches a guest.

Two ways in, both ending in the `tcp_edge` frontend:
- `--tcp-listen IP:PORT`: a TLS listener of its own (a second address or port);
- `--tcp-on-https`: the HTTPS listeners become an SNI-routing front in TCP mode. It
  reads the SNI from the ClientHello without terminating TLS and passes the
  connection over a unix socket (PROXY v2, so client addresses survive) to the
  HTTPS termination, or to `tcp_edge` when the SNI names a port exposed as tcp.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .maps import TCP_SUFFIX

if TYPE_CHECKING:
    from .haconfig import EdgeSettings

IDLE = "1h"           # a raw TCP connection (ssh, a database) may stay quiet a long time
HELLO_WAIT = "5s"     # the front waits this long for a ClientHello, then hands over to HTTPS


def inner_sockets(s: EdgeSettings) -> tuple[str, str]:
    """The unix sockets behind the front (HTTPS termination, TCP termination), beside
    the admin socket, so each edge (and each test's) has its own."""
    base = os.path.dirname(s.admin_socket)
    return f"{base}/edge-https.sock", f"{base}/edge-tcp.sock"


def https_bind_addresses(s: EdgeSettings) -> tuple[str, ...]:
    """Where the HTTPS termination listens: the public addresses, or behind the front."""
    if not s.tcp_on_https:
        return s.https_listen
    return (f"unix@{inner_sockets(s)[0]} accept-proxy",)


def _host_form(s: EdgeSettings) -> str:
    suffix = "\\." + s.domain.replace(".", "\\.") + "$"
    return "^[1-9][0-9]{0,4}-(-[a-z0-9]+-)?[a-z0-9]([a-z0-9-]*[a-z0-9])?" + suffix


def _parse(s: EdgeSettings, sni: str) -> str:
    """Rules setting sess.host/label/port/token/sid/pkey/shard from the SNI (two regsubs:
    HAProxy's converter arguments cannot hold parentheses)."""
    suffix = "\\." + s.domain.replace(".", "\\.") + "$"
    return f"""    tcp-request content set-var(sess.host) {sni},lower
    tcp-request content set-var(sess.label) var(sess.host),regsub({suffix},)
    tcp-request content set-var(sess.port) var(sess.label),field(1,-)
    tcp-request content set-var(sess.token) var(sess.label),field(3,-) if {{ var(sess.label) -m reg ^[0-9]+-- }}
    tcp-request content set-var(sess.sid) var(sess.label),regsub(^[0-9]+-,),regsub(^-[a-z0-9]+-,)
    tcp-request content set-var(sess.pkey) var(sess.sid),concat(/,sess.port),concat({TCP_SUFFIX})
    tcp-request content set-var(sess.shard) var(sess.sid),crc32,mod({s.shards})"""


def _name_ok() -> str:
    return "{ var(sess.label) -m len le 63 } { var(sess.port) -m int le 65535 }"


def render(s: EdgeSettings, shard_map: Callable[[int], str]) -> str:
    """The TCP defaults, the front (with --tcp-on-https), `tcp_edge` and its shard
    backends; "" when neither way in is on."""
    if not (s.tcp_listen or s.tcp_on_https):
        return ""
    binds = [f"    bind {addr} ssl crt {s.tls_pem} strict-sni" for addr in s.tcp_listen]
    if s.tcp_on_https:
        binds.append(f"    bind unix@{inner_sockets(s)[1]} accept-proxy ssl crt {s.tls_pem} strict-sni")
    parts = [f"""
# The raw TCP path has defaults of its own (the HTTP ones would not apply in TCP mode).
defaults tcp
    mode tcp
    log global
    option tcplog
    timeout connect {int(s.connect_timeout_s * 1000)}ms
    timeout client {IDLE}
    timeout server {IDLE}
""", _front(s, shard_map) if s.tcp_on_https else "", f"""
frontend tcp_edge
    # Raw TCP over TLS: the SNI says {{port}}-{{sandboxId}}.{s.domain}, or
    # {{port}}--{{token}}-{{sandboxId}}.{s.domain} for a private port (docs/edge.md, "Raw TCP").
{chr(10).join(binds)}
{_parse(s, "ssl_fc_sni")}
    tcp-request content reject unless {{ var(sess.host) -m reg {_host_form(s)} }}
    tcp-request content reject unless {_name_ok()}
    tcp-request content set-var(sess.token_got) var(sess.token),sha2(256),hex,lower if {{ var(sess.token) -m found }}
    use_backend tcp_shard%[var(sess.shard)]
"""]
    for i in range(s.shards):
        parts.append(f"""backend tcp_shard{i}
    tcp-request content set-var(sess.known) var(sess.sid),map({shard_map(i)})
    tcp-request content set-var(sess.route) var(sess.pkey),map({shard_map(i)})
    tcp-request content set-var(sess.token_want) var(sess.route),field(3,|)
    # Live (not paused), exposed as tcp, with an address; a private port needs its token.
    tcp-request content reject unless {{ var(sess.known) -m str 1 }} {{ var(sess.route),field(1,|) -m len gt 0 }}
    tcp-request content set-var(sess.token_ok) bool(1) if {{ var(sess.token_got),strcmp(sess.token_want) eq 0 }}
    tcp-request content reject if {{ var(sess.token_want) -m len gt 0 }} !{{ var(sess.token_ok) -m bool }}
    tcp-request content set-dst var(sess.route),field(1,|)
    tcp-request content set-dst-port var(sess.route),field(2,|)
    server sandbox 0.0.0.0:0
""")
    return "\n".join(parts)


def _front(s: EdgeSettings, shard_map: Callable[[int], str]) -> str:
    """The SNI-routing front on the HTTPS listeners (--tcp-on-https)."""
    https_sock, tcp_sock = inner_sockets(s)
    binds = "\n".join(f"    bind {addr}" for addr in s.https_listen)
    lines = [f"""
frontend https_front
    # TLS is not terminated here: the SNI of the ClientHello picks the termination.
{binds}
    tcp-request inspect-delay {HELLO_WAIT}
    # A condition waits for the whole ClientHello (or the delay) before the rules go on.
    tcp-request content set-var(sess.has_sni) bool(1) if {{ req.ssl_sni -m found }}
{_parse(s, "req.ssl_sni")}
    use_backend sni_shard%[var(sess.shard)] if {{ var(sess.host) -m reg {_host_form(s)} }} {_name_ok()}
    default_backend to_https

backend to_https
    server https unix@{https_sock} send-proxy-v2
"""]
    for i in range(s.shards):
        exposed_tcp = f"{{ var(sess.pkey),map({shard_map(i)}) -m found }}"
        lines.append(f"""backend sni_shard{i}
    use-server tcp if {exposed_tcp}
    use-server https unless {exposed_tcp}
    server https unix@{https_sock} send-proxy-v2
    server tcp unix@{tcp_sock} send-proxy-v2
""")
    return "\n".join(lines)

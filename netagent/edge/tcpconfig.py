"""The raw TCP path of the edge (issue 24 part 3, first slice): pure text.

`--tcp-listen IP:PORT` adds a TLS listener in TCP mode. The client's SNI names the
sandbox port as on the HTTP path (`{port}-{sandboxId}.{domain}`, strict-sni: no SNI or
another name fails the handshake); HAProxy terminates TLS and passes the bytes to
node_address:host_port from the same shard maps. Only public ports of live sandboxes
(not paused) are served: any other connection is closed before a byte reaches a guest.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .haconfig import EdgeSettings

IDLE = "1h"      # a raw TCP connection (ssh, a database) may stay quiet a long time


def render(s: EdgeSettings, shard_map: Callable[[int], str]) -> str:
    """The frontend and one backend per shard; "" without --tcp-listen."""
    if not s.tcp_listen:
        return ""
    suffix = "\\." + s.domain.replace(".", "\\.") + "$"
    host_form = "^[1-9][0-9]{0,4}-[a-z0-9]([a-z0-9-]*[a-z0-9])?" + suffix
    binds = "\n".join(f"    bind {addr} ssl crt {s.tls_pem} strict-sni" for addr in s.tcp_listen)
    lines = [f"""
# The raw TCP path has defaults of its own (the HTTP ones would not apply in TCP mode).
defaults tcp
    mode tcp
    log global
    option tcplog
    timeout connect {int(s.connect_timeout_s * 1000)}ms
    timeout client {IDLE}
    timeout server {IDLE}

frontend tcp_edge
    # Raw TCP over TLS: the SNI says {{port}}-{{sandboxId}}.{s.domain} (docs/edge.md, "Raw TCP").
{binds}
    tcp-request content set-var(sess.host) ssl_fc_sni,lower
    tcp-request content set-var(sess.label) var(sess.host),regsub({suffix},)
    tcp-request content set-var(sess.port) var(sess.label),field(1,-)
    tcp-request content set-var(sess.sid) var(sess.label),regsub(^[0-9]+-,)
    tcp-request content reject unless {{ var(sess.host) -m reg {host_form} }}
    tcp-request content reject unless {{ var(sess.label) -m len le 63 }} {{ var(sess.port) -m int le 65535 }}
    tcp-request content set-var(sess.pkey) var(sess.sid),concat(/,sess.port)
    tcp-request content set-var(sess.shard) var(sess.sid),crc32,mod({s.shards})
    use_backend tcp_shard%[var(sess.shard)]
"""]
    for i in range(s.shards):
        lines.append(f"""backend tcp_shard{i}
    tcp-request content set-var(sess.known) var(sess.sid),map({shard_map(i)})
    tcp-request content set-var(sess.route) var(sess.pkey),map({shard_map(i)})
    # Live (not paused), exposed, with an address, and public: else closed, no byte sent.
    tcp-request content reject unless {{ var(sess.known) -m str 1 }} {{ var(sess.route),field(1,|) -m len gt 0 }}
    tcp-request content reject if {{ var(sess.route),field(3,|) -m len gt 0 }}
    tcp-request content set-dst var(sess.route),field(1,|)
    tcp-request content set-dst-port var(sess.route),field(2,|)
    server sandbox 0.0.0.0:0
""")
    return "\n".join(lines)

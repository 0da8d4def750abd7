"""The interceptor's HAProxy config. Pure: settings in, text out; unit-tested.

Fixed at start: everything per sandbox (rules, secrets) reaches the Lua action
through the admin socket, and each ruled domain's certificate goes into the
crt-list at runtime (intercept/control.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LUA = Path(__file__).with_name("intercept.lua")

# One JSON object per request (log `format raw`, to stdout: a file the agent
# tails, intercept/requestlog.py): what a request record holds, never a header's value.
LOG_FORMAT = ('{"src":"%ci","sandbox":"%[var(txn.na_sandbox),json(utf8s)]","method":"%HM",'
              '"host":"%[var(txn.na_host),json(utf8s)]","path":"%[var(txn.na_path),json(utf8s)]",'
              '"status":%ST,"bytes_in":%U,"bytes_out":%B,"duration_ms":%Ta,'
              '"rule":"%[var(txn.na_rule),json(utf8s)]","action":"%[var(txn.na_action)]",'
              '"transform":"%[var(txn.na_transform)]","tls":%[ssl_fc],"termination":"%ts"}')


@dataclass(frozen=True)
class InterceptSettings:
    state_dir: Path            # CA, certificates, crt-list, request records (kept)
    run_dir: Path              # config, admin socket, pid (recreated each start)
    ca_bundle: str = "/etc/ssl/certs/ca-certificates.crt"   # what upstreams are verified against
    tls_port: int = 15443
    plain_port: int = 15080
    threads: int = 1
    maxconn: int = 4000
    max_header_bytes: int = 16384  # tune.bufsize: a request head past it is refused (400/431)
    max_conns_per_source: int = 256  # one sandbox's open connections: a flood cannot take every slot
    legacy_guest_tls: bool = False   # [intercept] legacy_guest_tls (config.py says why)

    @property
    def admin_socket(self) -> Path:
        return self.run_dir / "admin.sock"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "haproxy.pid"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def crt_list(self) -> Path:
        return self.state_dir / "certs.list"

    @property
    def cert_dir(self) -> Path:
        return self.state_dir / "certs"

    @property
    def default_pem(self) -> Path:
        return self.cert_dir / "default.pem"


DENIED = ('{"error":"denied by request rule","rule":"%[var(txn.na_rule),json(utf8s)]",'
          '"sandbox":"%[var(txn.na_sandbox),json(utf8s)]"}')
REFUSED = '{"error":"refused by the interceptor","reason":"%[var(txn.na_reason),json(utf8s)]"}'


def _legacy(s: InterceptSettings) -> str:
    return " ciphers DEFAULT:@SECLEVEL=0" if s.legacy_guest_tls else ""


def _per_source(s: InterceptSettings) -> str:
    return f"""\
  tcp-request connection track-sc0 src table na_sources
  tcp-request connection reject if {{ sc0_conn_cur gt {s.max_conns_per_source} }}
"""


def _decide(kind: str) -> str:
    return f"""\
  http-request set-var(txn.na_path) path
  http-request lua.netagent_decide
  http-request return status 403 content-type application/json lf-string '{DENIED}' \
if {{ var(txn.na_action) -m str deny }}
  http-request return status 403 content-type application/json lf-string '{REFUSED}' \
if !{{ var(txn.na_action) -m str allow }}
  use_backend na_up_{kind}
"""


def render(s: InterceptSettings) -> str:
    return f"""\
# netagent request interceptor (rendered at start; docs/architecture.md)
global
  nbthread {s.threads}
  maxconn {s.maxconn}
  lua-load {LUA}
  stats socket {s.admin_socket} mode 600 level admin
  log stdout len 8192 format raw local0 info
  tune.bufsize {s.max_header_bytes}
  tune.ssl.default-dh-param 2048
  ssl-server-verify required

defaults
  mode http
  log global
  log-format '{LOG_FORMAT}'
  option http-buffer-request
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-request 10s
  timeout http-keep-alive 60s
  timeout tunnel 1h

frontend na_tls
  bind :{s.tls_port} ssl crt {s.default_pem} crt-list {s.crt_list} alpn h2,http/1.1{_legacy(s)}
{_per_source(s)}  # no SNI: nothing to verify the upstream against
  http-request return status 403 content-type application/json \
string '{{"error":"refused by the interceptor","reason":"no TLS server name"}}' if !{{ ssl_fc_sni -m found }}
{_decide("tls")}
frontend na_plain
  bind :{s.plain_port}
{_per_source(s)}{_decide("plain")}
backend na_up_tls
  # 0.0.0.0: the connection's original destination (the address the guest
  # resolved through DNS admission); the certificate is checked against the SNI
  server up 0.0.0.0 ssl verify required ca-file {s.ca_bundle} sni ssl_fc_sni alpn http/1.1

backend na_up_plain
  server up 0.0.0.0

backend na_sources
  stick-table type ip size 100k store conn_cur
"""

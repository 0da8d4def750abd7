"""Agent configuration (pydantic v2). Invalid input is refused naming the field."""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import configfile
from .addressing import check_names_fit
from .configfile import DEFAULT_PATH, default_path, env_overrides  # noqa: F401 - the config API
from .errors import ConfigError
from .models import LABEL_KEY_RE

MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")

DEFAULT_ALWAYS_DENY = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
]


def edge_pair(text: str) -> tuple[ipaddress.IPv4Address, int]:
    """'198.51.100.2:443' -> (address, port); anything else is refused."""
    host, sep, port = str(text).strip().rpartition(":")
    try:
        addr = ipaddress.IPv4Address(host)
        number = int(port) if sep and port.isdigit() else 0
    except ValueError:
        addr, number = None, 0
    if addr is None or not 1 <= number <= 65535:
        raise ValueError(f"not an IPv4 ip:port: {text!r}")
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        raise ValueError(f"an edge address must be a unicast, non-loopback address: {text!r}")
    return addr, number


class GuestPlan(BaseModel):
    """What every slot looks like from inside the guest (identical in all slots)."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    guest_ip: ipaddress.IPv4Address = ipaddress.IPv4Address("169.254.0.21")
    gateway_ip: ipaddress.IPv4Address = ipaddress.IPv4Address("169.254.0.22")
    prefixlen: int = Field(30, ge=8, le=30)
    guest_mac: str = "02:fc:00:00:00:01"
    tap_mac: str = "02:fc:00:00:00:02"
    tap_name: str = "tap0"
    veth_name: str = "veth0"
    mtu: int = Field(1500, ge=576, le=9000)

    @field_validator("guest_mac", "tap_mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        v = v.lower()
        if not MAC_RE.match(v):
            raise ValueError(f"not a MAC address: {v!r}")
        if int(v[:2], 16) & 1:
            raise ValueError("must be a unicast MAC")
        return v

    @field_validator("tap_name", "veth_name")
    @classmethod
    def _ifname(cls, v: str) -> str:
        if not re.fullmatch(r"[a-zA-Z0-9_.-]{1,15}", v):
            raise ValueError(f"not a valid interface name: {v!r}")
        return v

    @model_validator(mode="after")
    def _same_subnet(self) -> GuestPlan:
        net = ipaddress.IPv4Network(f"{self.gateway_ip}/{self.prefixlen}", strict=False)
        if self.guest_ip not in net or self.guest_ip == self.gateway_ip:
            raise ValueError("guest_ip and gateway_ip must be distinct hosts of one subnet")
        if self.guest_mac == self.tap_mac:
            raise ValueError("guest_mac and tap_mac must differ")
        return self


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolConfig(_Section):
    size: int = Field(16, ge=0, le=65536)
    build_concurrency: int = Field(2, ge=1, le=64)
    refill_delay_s: float = Field(0.05, ge=0, le=10)   # refill/clean after this long without API calls
    ready_min_slots: int = Field(8, ge=0)    # READY=1 once this many warm slots exist (capped at size)
    # Depth follows demand (core/demand.py): size + allocations in the last demand_window_s, up to
    # max_size (a max_size at or below size: a fixed pool).
    max_size: int = Field(256, ge=0, le=65536)
    demand_window_s: float = Field(60.0, gt=0, le=3600)
    # Back to size after demand: at most one surplus slot torn down per shrink_interval_s (0: at once).
    shrink_interval_s: float = Field(2.0, ge=0, le=3600)


class DnsConfig(_Section):
    proxy_port: int = Field(10053, ge=1, le=65535)     # in host_netns; slots DNAT gateway:53 here
    upstreams: list[ipaddress.IPv4Address] = Field(default_factory=list)  # empty: the host's resolv.conf
    ttl_floor_s: int = Field(5, ge=1, le=3600)
    ttl_cap_s: int = Field(300, ge=1, le=86400)
    query_rate: int = Field(200, ge=1, le=1_000_000)       # packets per second per sandbox to the resolver
    query_burst: int = Field(50, ge=1, le=1_000_000)


class FirstPayloadConfig(_Section):
    """The layered domain check of sandboxes with a domain allowlist (docs/security.md)."""
    check: bool = True          # TCP 80/443 to DNS-admitted addresses: the first payload must name an allowed domain
    block_quic: bool = True     # UDP 443 to admitted addresses is dropped, so clients fall back to TCP
    queue: int = Field(4243, ge=0, le=65535)   # the NFQUEUE number the agent reads
    verdict_events_s: float = Field(5.0, gt=0, le=3600)   # FIRST_PAYLOAD_VERDICTS events at most this often


class ProbeConfig(_Section):
    """Reachability probes (SYN probes of exposed TCP ports; see docs/reachability.md)."""
    interval_s: float = Field(0.7, ge=0.05, le=60)      # when stable
    fast_interval_s: float = Field(0.1, ge=0.01, le=10)  # after an expose or a change...
    fast_period_s: float = Field(5.0, ge=0, le=600)      # ...for this long
    timeout_s: float = Field(0.5, ge=0.01, le=10)
    down_after: int = Field(2, ge=1, le=10)              # failed probes in a row before "unreachable"
    discovery_port_range: tuple[int, int] | None = None  # auto-expose guest listeners in this range
    discovery_rate: int = Field(200, ge=1, le=100_000)   # discovery probes per second, whole host

    @field_validator("discovery_port_range")
    @classmethod
    def _discovery(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not (1 <= v[0] <= v[1] <= 65535):
            raise ValueError("must be [low, high] with 1 <= low <= high <= 65535")
        return v


class RegistryConfig(_Section):
    # "sqlite:///path", "redis://host:port/db", "redis+cluster://h:p,h:p", "" (off). None: sqlite in state_dir.
    url: str | None = None
    ttl_s: float = Field(10.0, ge=1, le=3600)
    heartbeat_s: float = Field(3.0, ge=0.2, le=1200)
    node_address: str | None = None          # where host ports answer; None: the uplink's first address

    @model_validator(mode="after")
    def _check(self) -> RegistryConfig:
        if self.heartbeat_s * 2 > self.ttl_s:
            raise ValueError("registry heartbeat_s must be at most half of ttl_s")
        if self.url and not self.url.startswith(("sqlite://", "redis://", "rediss://", "unix://",
                                                 "redis+cluster://", "rediss+cluster://")):
            raise ValueError("registry url must be sqlite:///path, redis://host:port/db, "
                             "redis+cluster://host:port,... or empty (off)")
        return self


class ApiConfig(_Section):
    socket: Path = Path(configfile.DEFAULT_SOCKET)
    socket_group: str | None = None
    tcp_address: str | None = None      # "host:port"; requires tls_cert, tls_key and tls_ca (mTLS)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @model_validator(mode="after")
    def _tls(self) -> ApiConfig:
        if self.tcp_address:
            missing = [k for k in ("tls_cert", "tls_key", "tls_ca") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"api tcp_address needs mutual TLS: set {', '.join(missing)}")
            host, _, port = self.tcp_address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"api tcp_address must be host:port, got {self.tcp_address!r}")
        return self


class MetricsConfig(_Section):
    address: str | None = "127.0.0.1:9464"   # host:port in host_netns; empty/None disables
    per_sandbox: bool = False        # sandbox_id labels on traffic metrics (cardinality!)
    refresh_s: float = Field(5.0, gt=0)


class FlowsConfig(_Section):
    """The connection record (docs/operations.md, "Flow records"): every sandbox
    flow, when it ends, from conntrack's destroy events, in <state_dir>/flows.db."""
    record: bool = True
    retain_s: float = Field(7 * 86400.0, ge=60, le=366 * 86400)   # records older than this are deleted
    max_records: int = Field(5_000_000, ge=1000, le=1_000_000_000)  # past this, the oldest are deleted
    # A dump of conntrack, read and dropped, this often: the kernel deletes the
    # expired entries it walks, so their records come then, not at its next GC pass.
    reap_interval_s: float = Field(10.0, ge=0.2, le=3600)
    # The live sandbox flows' counters read (a dump parsed) and saved this often
    # (0: only at a graceful stop), so a flow that ends while the agent is down
    # (kill -9) is recorded with its bytes up to the last reading: a lower bound.
    counters_interval_s: float = Field(60.0, ge=0, le=86400)
    log: bool = True                  # also append each record to a JSON-lines file
    log_path: Path | None = None      # None: <state_dir>/flows.jsonl
    log_max_bytes: int = Field(100 << 20, ge=1 << 16)   # then renamed to <log_path>.1 (one kept)


# Flat keys of the 0.x config (TOML and NETAGENT_*), still accepted: key -> (section, field).
LEGACY_KEYS: dict[str, tuple[str, str]] = {
    "pool_size": ("pool", "size"), "pool_build_concurrency": ("pool", "build_concurrency"),
    "pool_refill_delay_s": ("pool", "refill_delay_s"), "ready_min_slots": ("pool", "ready_min_slots"),
    "pool_max_size": ("pool", "max_size"), "pool_demand_window_s": ("pool", "demand_window_s"),
    "dns_proxy_port": ("dns", "proxy_port"), "dns_upstreams": ("dns", "upstreams"),
    "dns_ttl_floor_s": ("dns", "ttl_floor_s"), "dns_ttl_cap_s": ("dns", "ttl_cap_s"),
    "dns_query_rate": ("dns", "query_rate"), "dns_query_burst": ("dns", "query_burst"),
    "probe_interval_s": ("probe", "interval_s"), "probe_fast_interval_s": ("probe", "fast_interval_s"),
    "probe_fast_period_s": ("probe", "fast_period_s"), "probe_timeout_s": ("probe", "timeout_s"),
    "probe_down_after": ("probe", "down_after"), "discovery_port_range": ("probe", "discovery_port_range"),
    "discovery_rate": ("probe", "discovery_rate"),
    "registry_url": ("registry", "url"), "registry_ttl_s": ("registry", "ttl_s"),
    "registry_heartbeat_s": ("registry", "heartbeat_s"), "node_address": ("registry", "node_address"),
    "api_socket": ("api", "socket"), "api_socket_group": ("api", "socket_group"),
    "api_tcp_address": ("api", "tcp_address"), "tls_cert": ("api", "tls_cert"), "tls_key": ("api", "tls_key"),
    "tls_ca": ("api", "tls_ca"),
    "metrics_address": ("metrics", "address"), "metrics_per_sandbox": ("metrics", "per_sandbox"),
    "metrics_refresh_s": ("metrics", "refresh_s"),
}
SECTION_KEYS = {v: k for k, v in LEGACY_KEYS.items()}


class InterceptConfig(_Section):
    """Request interception (issue #23; docs/architecture.md, docs/security.md). HAProxy
    starts with the first sandbox that has request rules."""
    enabled: bool = True
    tls_port: int = Field(15443, ge=1, le=65535)     # in host_netns; the steering rule redirects here
    plain_port: int = Field(15080, ge=1, le=65535)
    ca_bundle: Path = Path("/etc/ssl/certs/ca-certificates.crt")   # what upstream certificates are checked against
    run_dir: Path = Path("/run/netagent/intercept")  # haproxy's config and unix sockets
    request_log: Path | None = None                  # JSON lines, one per request (None: state_dir/requests.jsonl)
    request_events: bool = True                      # also an HTTP_REQUEST event per request (WatchEvents, state.db)
    max_conns_per_sandbox: int = Field(256, ge=1, le=100_000)
    # Guests whose TLS 1.2 client sends no signature_algorithms (busybox wget)
    # need SHA-1 handshake signatures, which OpenSSL 3 allows only at security
    # level 0. Off by default: it weakens every guest's handshake with the interceptor.
    legacy_guest_tls: bool = False
    threads: int = Field(1, ge=1, le=64)
    maxconn: int = Field(4000, ge=100, le=1_000_000)


class Config(BaseModel):
    """Immutable: a reload builds a new one (daemon.reload) and the agent swaps it in."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    prefix: str = "na"
    host_netns: str | None = None
    uplink: str | None = None
    transit_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("10.12.0.0/16")
    state_dir: Path = Path("/var/lib/netagent")
    node_id: str = Field(default_factory=lambda: __import__("socket").gethostname())
    host_port_range: tuple[int, int] = (20000, 29999)
    always_deny: list[ipaddress.IPv4Network] = Field(
        default_factory=lambda: [ipaddress.IPv4Network(c) for c in DEFAULT_ALWAYS_DENY])
    always_allow: list[ipaddress.IPv4Network] = Field(default_factory=list)
    # "ip:port" where this host's or a peer's edge listens (TCP): the one host
    # destination internet-on (or DNS-admitted) sandboxes may reach (hairpin).
    edge_addresses: list[str] = Field(default_factory=list)
    ct_mark_base: int = Field(0x4E410000, ge=0, le=0x7FFF0000)
    ruleset_check_interval_s: float = Field(1.0, gt=0, le=60)
    # How element changes reach the host table (firewall/drivers.py): "netlink",
    # one raw nf_tables batch; "libnftables", through libnftables' JSON as before.
    firewall_driver: Literal["netlink", "libnftables"] = "netlink"
    self_repair: bool = True                   # continuous reconcile of slots' kernel objects
    self_repair_sweep_slots_per_s: float = Field(2.0, ge=0, le=1000)  # backstop to kernel notices
    default_internet: bool = True
    conn_limit: int = Field(4096, ge=1, le=1_000_000)          # concurrent connections per sandbox
    new_conn_rate: int = Field(200, ge=1, le=1_000_000)        # new connections per second per sandbox
    new_conn_burst: int = Field(400, ge=1, le=1_000_000)
    events_retained: int = Field(100_000, ge=100)
    # Extra addresses on the uplink that a sandbox may be given as its SNAT
    # source (AllocateSpec.egress_address, SetEgressAddress); the operator puts
    # them on the uplink.
    egress_addresses: list[ipaddress.IPv4Address] = Field(default_factory=list)
    # Egress address by label: "key=value" -> one of egress_addresses, for
    # sandboxes allocated with that label and no egress_address of their own.
    egress_by_label: dict[str, ipaddress.IPv4Address] = Field(default_factory=dict)
    usage_interval_s: float = Field(2.0, gt=0, le=60)  # read + persist usage counters (usage/meter.py)
    denied_flow_events: bool = True          # FLOW_DENIED events + log lines from nflog (5/s per sandbox)
    log_json: bool = False
    log_level: str = "INFO"
    guest: GuestPlan = GuestPlan()
    pool: PoolConfig = PoolConfig()
    dns: DnsConfig = DnsConfig()
    first_payload: FirstPayloadConfig = FirstPayloadConfig()
    intercept: InterceptConfig = InterceptConfig()
    probe: ProbeConfig = ProbeConfig()
    registry: RegistryConfig = RegistryConfig()
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    flows: FlowsConfig = FlowsConfig()

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        """Fold the flat keys of older configs into their sections (a flat key
        wins over the same field in its section: NETAGENT_POOL_SIZE overrides
        [pool] size in a file)."""
        if not isinstance(data, dict) or not any(k in LEGACY_KEYS for k in data):
            return data
        data = dict(data)
        for key in [k for k in data if k in LEGACY_KEYS]:
            section, name = LEGACY_KEYS[key]
            current = data.get(section)
            body = dict(current) if isinstance(current, dict) else (
                current.model_dump() if isinstance(current, BaseModel) else {})
            body[name] = data.pop(key)
            data[section] = body
        return data

    def replace(self, **changes: Any) -> Config:
        """A validated copy with these changes (flat or section keys)."""
        data = self.model_dump()
        for key, value in changes.items():
            if key in LEGACY_KEYS:
                section, name = LEGACY_KEYS[key]
                data[section] = {**data[section], name: value}
            else:
                data[key] = value
        return Config.model_validate(data)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,7}", v):
            raise ValueError("must be 1-8 chars of [a-z0-9], starting with a letter")
        return v

    @field_validator("host_netns")
    @classmethod
    def _netns(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        path = v if v.startswith("/") else os.path.join("/run/netns", v)
        if not os.path.exists(path):
            raise ValueError(f"netns {path} does not exist")
        return path

    @field_validator("edge_addresses")
    @classmethod
    def _edges(cls, v: list[str]) -> list[str]:
        return sorted({"{}:{}".format(*edge_pair(item)) for item in v})

    def edge_pairs(self) -> list[tuple[ipaddress.IPv4Address, int]]:
        return [edge_pair(item) for item in self.edge_addresses]

    @field_validator("transit_cidr")
    @classmethod
    def _transit(cls, v: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
        if v.prefixlen > 30:
            raise ValueError("needs at least 4 addresses (prefix length <= 30)")
        if v.prefixlen < 15:
            raise ValueError("at most 65536 slots (prefix length >= 15)")
        return v

    @field_validator("host_port_range")
    @classmethod
    def _ports(cls, v: tuple[int, int]) -> tuple[int, int]:
        lo, hi = v
        if not (1 <= lo <= hi <= 65535):
            raise ValueError("must be [low, high] with 1 <= low <= high <= 65535")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR")
        return v

    def flow_log_path(self) -> Path | None:
        """Where flow records are appended as JSON lines (None: off)."""
        if not self.flows.log:
            return None
        return self.flows.log_path or self.state_dir / "flows.jsonl"

    def registry_in_effect(self) -> str:
        """The registry URL in effect ("" when off)."""
        if self.registry.url is None:
            return f"sqlite://{(self.state_dir / 'registry.db').absolute()}"
        return self.registry.url

    @model_validator(mode="after")
    def _names_fit(self) -> Config:
        check_names_fit(self.prefix, self.transit_cidr, self.guest.guest_ip)
        return self

    @model_validator(mode="after")
    def _egress_by_label(self) -> Config:
        for selector, address in self.egress_by_label.items():
            key, sep, value = selector.partition("=")
            if not sep or not LABEL_KEY_RE.match(key) or not value or len(value) > 256:
                raise ValueError(f"egress_by_label: {selector!r} is not 'key=value' (a label key, a value)")
            if address not in self.egress_addresses:
                raise ValueError(f"egress_by_label: {selector} -> {address} is not one of egress_addresses")
        return self


def _legacy_property(section: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, section), name),
                    doc=f"Read-only alias of {section}.{name} (the 0.x flat key).")


for _key, (_section, _name) in LEGACY_KEYS.items():
    setattr(Config, _key, _legacy_property(_section, _name))


def load(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read TOML (if given), apply NETAGENT_* overrides, validate."""
    data = configfile.read(path, environ)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc)) from exc


def describe(exc: ValidationError) -> str:
    lines = ["invalid config:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(config)"
        if legacy := SECTION_KEYS.get(tuple(str(p) for p in err["loc"][:2])):  # type: ignore[arg-type]
            field += f" ({legacy})"
        lines.append(f"  {field}: {err['msg']}")
    return "\n".join(lines)

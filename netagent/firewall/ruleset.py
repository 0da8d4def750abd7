"""Render the rulesets in rules/ for loading. Pure: text in, text out."""
from __future__ import annotations

import hashlib
import ipaddress
import re
from pathlib import Path

from ..config import Config
from . import names
from .elements import Element, to_text

# netagent/rules: a symlink to the top-level rules/ in a checkout, a copy in an installed wheel
RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
HOST_RULES = "netagent.nft"
SLOT_RULES = "slot.nft"
FIRST_PAYLOAD_RULES = "firstpayload.nft"
_QUIC_RULE = r"^\s*ip saddr @sni_check udp dport 443 .*jump deny_quic\n"
_LABEL_RULE = (r"^\s*ip saddr @sni_check tcp dport .*tcp option fastopen exists .*drop\n"
               r"\s*oifname @uplinks ip saddr @sni_check tcp dport .*ct label set 100 accept\n")



def fingerprint(text: str) -> str:
    """Of a rendered ruleset (the slot rules; the fake driver's host table)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_rules(name: str, rules_dir: Path = RULES_DIR) -> str:
    return (rules_dir / name).read_text()


def host_table_text(config: Config, source: str) -> str:
    """The host ruleset with the table named after the prefix and the caps from
    the config (nft takes no variables in these spots)."""
    text = _sub_once(r"^table inet netagent \{", f"table inet {config.prefix} {{", source)
    if not config.first_payload.block_quic:
        text = _sub_once(_QUIC_RULE, "", text)
    if not config.first_payload.check:
        text = _sub_once(_LABEL_RULE, "", text)
    text = _sub_once(r"ct count over \d+", f"ct count over {config.conn_limit}", text)
    text = _intercept_ports(text, config.intercept.tls_port, config.intercept.plain_port)
    text = _sub_once(r"th dport 10053 fib", f"th dport {config.dns.proxy_port} fib", text)
    text = _sub_once(r"@dns_rate \{ ip saddr limit rate over \d+/second burst \d+ packets",
                     f"@dns_rate {{ ip saddr limit rate over {config.dns.query_rate}/second "
                     f"burst {config.dns.query_burst} packets", text)
    return _sub_once(r"@conn_rate \{ ip saddr limit rate over \d+/second burst \d+ packets",
                     f"@conn_rate {{ ip saddr limit rate over {config.new_conn_rate}/second "
                     f"burst {config.new_conn_burst} packets", text)


def _intercept_ports(text: str, tls: int, plain: int) -> str:
    """The interceptor's listener ports (config intercept.*) in its four rules."""
    ports = f"{{ {tls}, {plain} }}"
    for pattern, repl in ((r"tcp dport \{ 15443, 15080 \} ct status & dnat", f"tcp dport {ports} ct status & dnat"),
                          (r"tcp dport \{ 15443, 15080 \} ct status dnat", f"tcp dport {ports} ct status dnat"),
                          (r"tcp dport 80 redirect to :15080", f"tcp dport 80 redirect to :{plain}"),
                          (r"@intercept_dst redirect to :15443", f"@intercept_dst redirect to :{tls}")):
        text = _sub_once(pattern, repl, text)
    return text


def first_payload_table(config: Config) -> str:
    return config.prefix + names.FIRST_PAYLOAD_TABLE_SUFFIX


def first_payload_text(config: Config, source: str) -> str:
    """rules/firstpayload.nft as `table ip <prefix>_fp`."""
    return _sub_once(r"^table ip firstpayload \{", f"table ip {first_payload_table(config)} {{", source)


def _sub_once(pattern: str, replacement: str, text: str) -> str:
    out, n = re.subn(pattern, replacement, text, flags=re.M)
    if n != 1:
        raise ValueError(f"{HOST_RULES} must contain exactly one match of {pattern!r}")
    return out


def config_elements(config: Config, uplink: str, host_addrs: list[str]) -> list[Element]:
    deny = [str(n) for n in config.always_deny] + [str(config.transit_cidr)] + [f"{a}/32" for a in host_addrs]
    elements = [Element(names.UPLINKS, uplink)]
    elements += [Element(names.ALWAYS_DENY, _interval(c)) for c in _merge(deny)]
    elements += [Element(names.ALWAYS_ALLOW, _interval(c)) for c in _merge([str(n) for n in config.always_allow])]
    elements += [Element(names.EDGE_ADDRESSES, (str(addr), port)) for addr, port in config.edge_pairs()]
    return elements


def full_load_script(config: Config, source: str, fixed: list[Element], dynamic: list[Element]) -> str:
    """Replace the table atomically: create-if-missing, delete, define, fill."""
    return replace_table_script(config.prefix, host_table_text(config, source), fixed, dynamic)


def replace_table_script(table: str, rules_text: str, fixed: list[Element], dynamic: list[Element]) -> str:
    """`rules_text` (the rendered table) in place of the table, filled, in one transaction."""
    return (f"table inet {table} {{}}\ndelete table inet {table}\n" + rules_text
            + to_text(table, fixed) + to_text(table, dynamic))


def slot_script(config: Config, source: str, host_ip: str) -> str:
    g = config.guest
    defines = (f'define tap = "{g.tap_name}"\ndefine veth = "{g.veth_name}"\n'
               f"define guest_ip = {g.guest_ip}\ndefine guest_mac = {g.guest_mac}\n"
               f"define gateway_ip = {g.gateway_ip}\ndefine dns_ip = {host_ip}\n"
               f"define dns_port = {config.dns.proxy_port}\n")
    return defines + source


def _merge(cidrs: list[str]) -> list[ipaddress.IPv4Network]:
    return list(ipaddress.collapse_addresses(ipaddress.IPv4Network(c, strict=False) for c in cidrs))


def _interval(net: ipaddress.IPv4Network) -> str:
    return str(net) if net.prefixlen < 32 else str(net.network_address)

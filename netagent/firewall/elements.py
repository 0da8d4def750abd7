"""Pure element plans for the host table. No I/O: unit-tested without root.

Every per-slot and per-allocation fact is one element of a set or map in
rules/netagent.nft. A change is a list of `Op`s rendered into one transaction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..addressing import SlotAddresses
from ..policy import CompiledPolicy

Key = str | int | tuple[str | int, ...]


@dataclass(frozen=True)
class Element:
    set: str
    key: Key
    value: Key | None = None   # for maps: the data; verdicts are "jump <chain>"


@dataclass(frozen=True)
class Op:
    verb: str          # "add" or "delete"
    element: Element


def slot_elements(slot: SlotAddresses) -> list[Element]:
    """Elements that exist for as long as the slot's kernel objects do."""
    return [
        Element("sbx_ifaces", slot.host_veth),
        Element("sbx_src", (slot.host_veth, str(slot.sandbox_ip))),
        Element("slot_mark", str(slot.sandbox_ip), slot.ct_mark),
        Element("slot_mark_in", str(slot.sandbox_ip), slot.ct_mark_in),
    ]


def egress_element(slot: SlotAddresses, internet: bool) -> Element:
    return Element("egress_mode", str(slot.sandbox_ip), "jump mode_open" if internet else "jump mode_blocked")


def policy_elements(slot: SlotAddresses, policy: CompiledPolicy) -> list[Element]:
    """The egress mode plus one element per allow/deny entry (two with a port:
    TCP and UDP)."""
    out = [egress_element(slot, policy.internet)]
    ip = str(slot.sandbox_ip)
    if policy.domains:
        out.append(Element("dns_locked", ip))
    for kind, entries in (("allow", policy.allow), ("deny", policy.deny)):
        for np in entries:
            net = str(np.net) if np.net.prefixlen < 32 else str(np.net.network_address)
            if np.port is None:
                out.append(Element(f"{kind}_net", (ip, net)))
            else:
                out += [Element(f"{kind}_port", (ip, net, proto, np.port)) for proto in ("tcp", "udp")]
    return out


def port_element(slot: SlotAddresses, protocol: str, host_port: int, guest_port: int) -> Element:
    return Element("port_dnat", (protocol, host_port), (str(slot.sandbox_ip), guest_port))


def add(elements: list[Element]) -> list[Op]:
    return [Op("add", e) for e in elements]


def delete(elements: list[Element]) -> list[Op]:
    """Idempotent delete: add-then-delete never fails on an element already gone."""
    ops: list[Op] = []
    for e in elements:
        ops += [Op("add", e), Op("delete", e)]
    return ops


def _json_value(v: Key) -> Any:
    if isinstance(v, tuple):
        return {"concat": [_json_value(x) for x in v]}
    if isinstance(v, str) and "/" in v:
        addr, length = v.split("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    if isinstance(v, str) and v.startswith(("jump ", "goto ")):
        verb, target = v.split(" ", 1)
        return {verb: {"target": target}}
    return v


def to_json(table: str, ops: list[Op]) -> dict[str, Any]:
    """One libnftables JSON transaction. Consecutive ops on one set share a command."""
    cmds: list[dict[str, Any]] = []
    last: tuple[str, str] | None = None
    for op in ops:
        e = op.element
        item = _json_value(e.key) if e.value is None or op.verb == "delete" else [
            _json_value(e.key), _json_value(e.value)]
        if last == (op.verb, e.set):
            cmds[-1][op.verb]["element"]["elem"].append(item)
            continue
        cmds.append({op.verb: {"element": {"family": "inet", "table": table, "name": e.set, "elem": [item]}}})
        last = (op.verb, e.set)
    return {"nftables": cmds}


def _text_value(v: Key) -> str:
    if isinstance(v, tuple):
        return " . ".join(_text_value(x) for x in v)
    if isinstance(v, str) and not v[0].isdigit() and not v.startswith(("jump ", "goto ")) and v not in ("tcp", "udp"):
        return f'"{v}"'
    return str(v)


def key_text(e: Element) -> str:
    """The element's key in nft syntax (for `get element` lookups)."""
    return _text_value(e.key)


def to_text(table: str, elements: list[Element]) -> str:
    """`add element` lines, for the atomic full reload."""
    by_set: dict[str, list[str]] = {}
    for e in elements:
        item = _text_value(e.key) if e.value is None else f"{_text_value(e.key)} : {_text_value(e.value)}"
        by_set.setdefault(e.set, []).append(item)
    return "".join(f"add element inet {table} {name} {{ {', '.join(items)} }}\n"
                   for name, items in by_set.items())

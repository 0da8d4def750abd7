"""Pure element plans for the host table. No I/O: unit-tested without root.

Every per-slot and per-allocation fact is one element of a set or map in
rules/netagent.nft. A change is a list of `Op`s rendered into one transaction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..addressing import SlotAddresses
from ..policy import CompiledPolicy
from . import names

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
        Element(names.SBX_IFACES, slot.host_veth),
        Element(names.SBX_SRC, (slot.host_veth, str(slot.sandbox_ip))),
        Element(names.SLOT_MARK_IN, str(slot.sandbox_ip), slot.ct_mark_in),
    ]


def egress_mark_elements(slot: SlotAddresses, generation: int) -> list[Element]:
    """The mark given to flows the sandbox starts, and that mark as live."""
    mark = slot.egress_mark(generation)
    return [Element(names.SLOT_MARK, str(slot.sandbox_ip), mark), Element(names.LIVE_MARKS, mark)]


def mark_elements(slot: SlotAddresses, generation: int) -> list[Element]:
    """An allocation's marks: its flows live exactly as long as these do."""
    return egress_mark_elements(slot, generation) + [Element(names.LIVE_MARKS, slot.ct_mark_in)]


def egress_element(slot: SlotAddresses, internet: bool) -> Element:
    return Element(names.EGRESS_OPEN if internet else names.EGRESS_BLOCKED, str(slot.sandbox_ip))


def policy_elements(slot: SlotAddresses, policy: CompiledPolicy) -> list[Element]:
    """The egress mode plus one element per allow/deny entry (two with a port:
    TCP and UDP)."""
    out = [egress_element(slot, policy.internet)]
    ip = str(slot.sandbox_ip)
    if policy.domains:
        out.append(Element(names.DNS_LOCKED, ip))
    if policy.domains and not policy.internet:   # a domain allowlist: first payloads are checked
        out.append(Element(names.SNI_CHECK, ip))
    for net_set, port_set, entries in ((names.ALLOW_NET, names.ALLOW_PORT, policy.allow),
                                       (names.DENY_NET, names.DENY_PORT, policy.deny)):
        for np in entries:
            net = str(np.net) if np.net.prefixlen < 32 else str(np.net.network_address)
            if np.port is None:
                out.append(Element(net_set, (ip, net)))
            else:
                out += [Element(port_set, (ip, net, proto, np.port)) for proto in ("tcp", "udp")]
    return out


def egress_snat_element(slot: SlotAddresses, address: str) -> Element:
    return Element(names.EGRESS_SNAT, str(slot.sandbox_ip), address)


def usage_elements(sandbox_ip: str) -> list[Element]:
    """The sandbox IP in every usage counter set (fresh elements count from 0)."""
    return [Element(name, sandbox_ip) for name in names.USAGE_SETS.values()]


def port_element(slot: SlotAddresses, protocol: str, host_port: int, guest_port: int) -> Element:
    return Element(names.PORT_DNAT, (protocol, host_port), (str(slot.sandbox_ip), guest_port))


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


def from_json_value(v: Any) -> Key:
    """A key or value as libnftables lists it, back in Element form."""
    if isinstance(v, dict) and "concat" in v:
        return tuple(from_json_value(x) for x in v["concat"])  # type: ignore[misc]
    if isinstance(v, dict) and "prefix" in v:
        return f"{v['prefix']['addr']}/{v['prefix']['len']}"
    if isinstance(v, dict) and "range" in v:
        return f"{v['range'][0]}-{v['range'][1]}"
    if isinstance(v, dict) and len(v) == 1 and next(iter(v)) in ("jump", "goto"):
        verb = next(iter(v))
        return f"{verb} {v[verb]['target']}"
    return v  # type: ignore[no-any-return]


def from_json_item(set_name: str, item: Any) -> Element:
    """One listed element (`{"elem": {"val": ...}}` when it has a timeout)."""
    if isinstance(item, dict) and "elem" in item:
        item = item["elem"]["val"]
    if isinstance(item, list):
        return Element(set_name, from_json_value(item[0]), from_json_value(item[1]))
    return Element(set_name, from_json_value(item))


def timed_json(table: str, set_name: str, keys: list[tuple[Key, int]]) -> dict[str, Any]:
    """Add with timeouts; add-delete-add restarts the timeout of elements already there."""
    target = {"family": "inet", "table": table, "name": set_name}
    items = [{"elem": {"val": _json_value(k), "timeout": ttl}} for k, ttl in keys]
    plain = [_json_value(k) for k, _ in keys]
    return {"nftables": [{"add": {"element": {**target, "elem": items}}},
                         {"delete": {"element": {**target, "elem": plain}}},
                         {"add": {"element": {**target, "elem": items}}}]}


def _text_value(v: Key) -> str:
    if isinstance(v, tuple):
        return " . ".join(_text_value(x) for x in v)
    if isinstance(v, str) and not v[0].isdigit() and not v.startswith(("jump ", "goto ")) and v not in ("tcp", "udp"):
        return f'"{v}"'
    return str(v)


def key_text(e: Element) -> str:
    """The element's key in nft syntax (for `get element` lookups)."""
    return _text_value(e.key)


def timed_text(table: str, set_name: str, keys: list[tuple[Key, int]]) -> str:
    """An `add element` line with timeouts (s), for the atomic full reload."""
    if not keys:
        return ""
    items = ", ".join(f"{_text_value(k)} timeout {max(1, ttl)}s" for k, ttl in keys)
    return f"add element inet {table} {set_name} {{ {items} }}\n"


def from_timed_json_item(set_name: str, item: Any) -> tuple[Key, int] | None:
    """A listed element of a timeout set as (key, seconds left); None without a timeout."""
    if not (isinstance(item, dict) and "elem" in item and "expires" in item["elem"]):
        return None
    return from_json_item(set_name, item).key, int(item["elem"]["expires"])


def to_text(table: str, elements: list[Element]) -> str:
    """`add element` lines, for the atomic full reload."""
    by_set: dict[str, list[str]] = {}
    for e in elements:
        item = _text_value(e.key) if e.value is None else f"{_text_value(e.key)} : {_text_value(e.value)}"
        by_set.setdefault(e.set, []).append(item)
    return "".join(f"add element inet {table} {name} {{ {', '.join(items)} }}\n"
                   for name, items in by_set.items())

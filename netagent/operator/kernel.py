"""Read-only looks at the kernel for operators (drift checks). Lookups run on
a thread inside the right netns; nothing is changed."""
from __future__ import annotations

import ipaddress
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

from .. import netns

if TYPE_CHECKING:   # element plans and the Config pull in pydantic: only show needs them
    from ..config import Config
    from ..firewall import elements as el


def in_netns(path: str | None, fn: Any) -> Any:
    """Run fn() on a thread inside the netns at `path` (None: the current one)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            netns.enter_for_good(path)
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False


def table_loaded(config: Any) -> bool:
    """Is the agent's table there (`config`: a Config or quick.ClientSettings).
    One netlink request: libnftables would list the whole ruleset first."""
    from ..firewall.table_probe import table_exists
    return in_netns(config.host_netns, lambda: table_exists("inet", config.prefix))


def expected_elements(sandbox: dict[str, Any]) -> list[el.Element]:
    """The host elements the agent keeps for this sandbox (from its API record)."""
    from ..firewall import elements as el
    from ..models import EgressPolicy
    from ..policy import compile_policy
    net = sandbox["network"]
    slot = _SlotView(net)
    p = sandbox.get("policy", {})
    policy = compile_policy(EgressPolicy(internet=p.get("internet", True), allow_out=tuple(p.get("allowOut", [])),
                                         deny_out=tuple(p.get("denyOut", []))))
    out = el.slot_elements(slot) + el.policy_elements(slot, policy)  # type: ignore[arg-type]
    for port in sandbox.get("ports", []):
        proto = port.get("protocol", "PROTOCOL_TCP").removeprefix("PROTOCOL_").lower()
        out.append(el.port_element(slot, proto, int(port["hostPort"]), int(port["guestPort"])))  # type: ignore[arg-type]
    return out


def sandbox_drift(config: Config, sandbox: dict[str, Any]) -> list[dict[str, str]]:
    """Kernel objects and nft elements the sandbox should have but lacks."""
    from ..firewall import elements as el
    from ..firewall.nft import connect
    net = sandbox["network"]
    wanted = expected_elements(sandbox)

    def host_side() -> list[dict[str, str]]:
        nft = connect()
        missing = [] if link_exists(net["hostVeth"]) else [f"link {net['hostVeth']}"]
        missing += [f"element {e.set} {{ {el.key_text(e)} }}" for e in wanted
                    if not nft.has_element(config.prefix, e.set, el.key_text(e))]
        return missing
    missing = in_netns(config.host_netns, host_side)
    path = netns.path_of(net["netns"])
    if not os.path.exists(path):
        missing.append(f"netns {net['netns']}")
    elif not in_netns(path, lambda: link_exists(net["tap"])):
        missing.append(f"tap {net['tap']} in {net['netns']}")
    return [{"object": m, "problem": "missing in the kernel"} for m in missing]


class _SlotView:
    """The SlotAddresses fields element plans read, from an API record."""

    def __init__(self, net: dict[str, Any]):
        self.host_veth = net["hostVeth"]
        self.sandbox_ip = ipaddress.IPv4Address(net["sandboxIp"])
        self.ct_mark = self.ct_mark_in = 0  # map values are not compared, only keys

"""libnftables driver. A context is bound to the netns of the thread that made it
and is not thread-safe: make one per worker thread, after entering the netns."""
from __future__ import annotations

import json
import time
from typing import Any

import nftables

from ..errors import Unavailable
from . import ruleset

MAPS = ("egress_mode", "port_dnat", "slot_mark", "slot_mark_in")
SETS = ("uplinks", "always_deny", "always_allow", "sbx_ifaces", "sbx_src",
        "allow_net", "allow_port", "deny_net", "deny_port", "dns_locked")
# fqdn_ips is not state: its elements come from DNS answers and expire.


class Nft:
    def __init__(self) -> None:
        self.ctx = nftables.Nftables()
        self.ctx.set_handle_output(False)
        self.last_duration_s = 0.0

    def run(self, text: str) -> str:
        return self._call(self.ctx.cmd, text)

    def run_json(self, doc: dict[str, Any]) -> str:
        return self._call(self.ctx.json_cmd, doc)

    def _call(self, fn: Any, arg: Any) -> str:
        started = time.perf_counter()
        rc, out, err = fn(arg)
        self.last_duration_s = time.perf_counter() - started
        if rc != 0:
            raise Unavailable(f"nftables transaction failed: {err.strip()}")
        return out

    def table_fingerprint(self, table: str) -> str | None:
        """Fingerprint of the table's rules, without elements or counters. Cheap at
        any number of sandboxes: terse listing omits set elements."""
        self.ctx.set_terse_output(True)
        self.ctx.set_stateless_output(True)
        try:
            rc, out, _ = self.ctx.cmd(f"list table inet {table}")
        finally:
            self.ctx.set_terse_output(False)
            self.ctx.set_stateless_output(False)
        return ruleset.fingerprint(out) if rc == 0 else None

    def counters(self, table: str) -> dict[str, int]:
        """Packets of every named counter of the table."""
        self.ctx.set_json_output(True)
        try:
            out = self.run(f"list counters table inet {table}")
        finally:
            self.ctx.set_json_output(False)
        return {o["counter"]["name"]: o["counter"]["packets"] for o in json.loads(out)["nftables"] if "counter" in o}

    def has_element(self, table: str, name: str, key: str) -> bool:
        """One keyed lookup (`get element`), cheap at any set size."""
        rc, _, _ = self.ctx.cmd(f"get element inet {table} {name} {{ {key} }}")
        return rc == 0

    def list_set(self, table: str, name: str) -> list[Any]:
        """Elements of one set/map as JSON items (for drift checks, not hot paths)."""
        self.ctx.set_json_output(True)
        try:
            out = self.run(f"list set inet {table} {name}" if name not in MAPS
                           else f"list map inet {table} {name}")
        finally:
            self.ctx.set_json_output(False)
        for obj in json.loads(out)["nftables"]:
            body = obj.get("set") or obj.get("map")
            if body:
                return body.get("elem", [])
        return []

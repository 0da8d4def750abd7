"""libnftables, the only place that speaks to it. A context is bound to the
netns of the thread that made it and is not thread-safe: make one per worker
thread, after entering the netns, with `connect()`."""
from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import nftables

from ..errors import Unavailable
from . import names

# The sets and maps whose content is derived from config + state (names.py holds the names).
SETS = names.STATE_SETS
MAPS = names.STATE_MAPS


def connect() -> Nft:
    """A libnftables context in the calling thread's netns (the one constructor)."""
    return Nft(nftables.Nftables())


class Nft:
    def __init__(self, ctx: Any):
        self._ctx = ctx
        self._ctx.set_handle_output(False)
        self.last_duration_s = 0.0

    def run(self, text: str) -> str:
        """One transaction in nft syntax; raises Unavailable if the kernel refuses it."""
        return self._call(self._ctx.cmd, text)

    def run_json(self, doc: dict[str, Any]) -> str:
        return self._call(self._ctx.json_cmd, doc)

    def _call(self, fn: Any, arg: Any) -> str:
        started = time.perf_counter()
        rc, out, err = fn(arg)
        self.last_duration_s = time.perf_counter() - started
        if rc != 0:
            raise Unavailable(f"nftables transaction failed: {err.strip()}")
        return str(out)

    def works(self) -> bool:
        """The kernel answers an nft command at all."""
        return bool(self._ctx.cmd("list tables")[0] == 0)

    @contextlib.contextmanager
    def _json_output(self) -> Iterator[None]:
        self._ctx.set_json_output(True)
        try:
            yield
        finally:
            self._ctx.set_json_output(False)

    def _list_json(self, what: str) -> list[dict[str, Any]]:
        with self._json_output():
            rc, out, _ = self._ctx.cmd(f"list {what}")
        return list(json.loads(out)["nftables"]) if rc == 0 and out else []

    # ---- tables -------------------------------------------------------------

    def table_exists(self, table: str, family: str = "inet") -> bool:
        return bool(self._ctx.cmd(f"list table {family} {table}")[0] == 0)

    def table_text(self, table: str, family: str = "inet") -> str | None:
        rc, out, _ = self._ctx.cmd(f"list table {family} {table}")
        return str(out) if rc == 0 else None

    def delete_table(self, table: str, family: str = "inet") -> bool:
        """Delete it if it exists; True if it did."""
        if not self.table_exists(table, family):
            return False
        self.run(f"delete table {family} {table}")
        return True

    def tables(self, family: str = "inet") -> list[dict[str, Any]]:
        """[{"name": ..., "comment": ...}, ...] of one family."""
        return [o["table"] for o in self._list_json(f"tables {family}") if "table" in o]

    def all_tables(self) -> set[tuple[str, str]]:
        """(family, name) of every table in this netns."""
        return {(t["family"], t["name"]) for o in self._list_json("tables") if (t := o.get("table"))}

    def chains(self) -> list[dict[str, Any]]:
        """Every chain of every table (family, table, name, hook, policy...)."""
        return [o["chain"] for o in self._list_json("chains") if "chain" in o]

    def chain_has_rules(self, family: str, table: str, chain: str) -> bool:
        return any("rule" in o for o in self._list_json(f"chain {family} {table} {chain}"))


    # ---- elements -----------------------------------------------------------

    def has_element(self, table: str, name: str, key: str) -> bool:
        """One keyed lookup (`get element`), cheap at any set size."""
        rc, _, _ = self._ctx.cmd(f"get element inet {table} {name} {{ {key} }}")
        return bool(rc == 0)

    def lookup_interval(self, table: str, name: str, addr: str) -> str | None:
        """The element of an interval set that holds addr, as the kernel lists it
        (a CIDR or a range). `get element` answers in text whatever the output mode."""
        rc, out, _ = self._ctx.cmd(f"get element inet {table} {name} {{ {addr} }}")
        m = re.search(r"elements = \{ ([^}]*?) \}", out) if rc == 0 else None
        return m.group(1) if m else None

    def list_set(self, table: str, name: str) -> list[Any]:
        """Elements of one set/map as JSON items (for drift checks, not hot paths)."""
        kind = "map" if name in names.MAPS else "set"
        with self._json_output():
            out = self.run(f"list {kind} inet {table} {name}")
        for obj in json.loads(out)["nftables"]:
            body = obj.get("set") or obj.get("map")
            if body:
                return list(body.get("elem", []))
        return []

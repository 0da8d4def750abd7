"""The firewall driver: everything the agent does to its host table.

`FirewallDriver` is the interface (element transactions, full syncs, lookups);
`HostTable` implements it over libnftables for one table, and
`firewall/fake.py` implements it in memory for unit tests. The agent picks one
in one place (`Agent.__init__` takes a factory). Set names come from
`firewall/names.py`; nft syntax stays in this package.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol

from ..errors import Unavailable
from . import counter_objects, element_probe, names, rules_probe, ruleset, set_dump, xt_queue
from . import elements as el
from .generation import GenerationWatch, read_generation
from .nft import Nft, connect
from .table_probe import table_handle

# (table handle or None, set name -> sandbox IP -> (packets, bytes))
UsageReading = tuple[int | None, dict[str, dict[str, tuple[int, int]]]]


class FirewallDriver(Protocol):
    table: str
    last_duration_s: float   # of the last transaction

    def apply(self, ops: Sequence[el.Op]) -> None:
        """One transaction of element adds/deletes: all or nothing."""

    def refill(self, fixed: Sequence[el.Element], dynamic: Sequence[el.Element]) -> None:
        """One transaction: flush every state set and map, add these."""

    def reload(self, rules_text: str, fixed: Sequence[el.Element], dynamic: Sequence[el.Element]) -> None:
        """One transaction: replace the whole table with this ruleset and these
        elements, keeping the DNS admissions (fqdn_ips) with the time they have left."""

    def fingerprint(self) -> str | None:
        """Of the table's rules (None: no table)."""

    def generation(self) -> int | None:
        """The netns' ruleset generation (None: this driver cannot tell)."""

    def has(self, element: el.Element) -> bool: ...

    def elements(self, set_name: str) -> list[el.Element]: ...

    def admit(self, set_name: str, keys: Sequence[tuple[el.Key, int]]) -> None:
        """Add elements with these timeouts (s), restarting the timeout of any
        already there, in one transaction."""

    def counters(self) -> dict[str, int]: ...

    def usage(self) -> UsageReading:
        """The usage counter sets (set -> key -> (packets, bytes)) and the
        table's handle (None: no table)."""

    def usage_of(self, ips: Sequence[str]) -> UsageReading:
        """`usage` for these sandbox IPs only (closing released sandboxes)."""

    def delete_table(self) -> bool: ...

    def ensure_first_payload(self, table: str, rules_text: str, queue: int) -> bool:
        """Load the first-payload table (`ip <table>`) with its queue rule unless
        it is there; True if it was (re)loaded."""

    def delete_first_payload(self, table: str) -> bool: ...


class HostTable:
    """FirewallDriver over libnftables, for `inet <table>` in the calling thread's netns."""

    def __init__(self, table: str, nft: Nft | None = None, watch: GenerationWatch | None = None):
        self.table = table
        self.nft = nft or connect()
        self.watch = watch   # shared by the agent's threads in the host netns

    def _commit(self, run: Callable[[], object]) -> None:
        """A transaction of ours; with a watch, tell it the generation it made."""
        if self.watch is None:
            run()
            return
        with self.watch.lock:
            run()
            self.watch.own_commit(read_generation())

    def generation(self) -> int | None:
        return read_generation()

    @property
    def last_duration_s(self) -> float:
        return self.nft.last_duration_s

    def apply(self, ops: Sequence[el.Op]) -> None:
        if ops:
            self._commit(lambda: self.nft.run_json(el.to_json(self.table, list(ops))))

    def refill(self, fixed: Sequence[el.Element], dynamic: Sequence[el.Element]) -> None:
        t = self.table
        flush = "".join(f"flush set inet {t} {s}\n" for s in names.STATE_SETS)
        flush += "".join(f"flush map inet {t} {m}\n" for m in names.STATE_MAPS)
        self._commit(lambda: self.nft.run(flush + el.to_text(t, list(fixed)) + el.to_text(t, list(dynamic))))

    def reload(self, rules_text: str, fixed: Sequence[el.Element], dynamic: Sequence[el.Element]) -> None:
        def run() -> None:
            # Read inside the commit lock: no admission of ours lands between the read and the reload.
            kept = el.timed_text(self.table, names.FQDN_IPS, self._admissions())
            self.nft.run(ruleset.replace_table_script(self.table, rules_text, list(fixed), list(dynamic)) + kept)
        self._commit(run)

    def _admissions(self) -> list[tuple[el.Key, int]]:
        """DNS admissions (fqdn_ips) with the seconds they have left, which a
        reload carries over: an upgrade or a drift repair must not cut a sandbox
        off the addresses it resolved. None while there is no table."""
        try:
            items = self.nft.list_set(self.table, names.FQDN_IPS)
        except Unavailable:  # no table (first start, or deleted), or no such set in an older one
            return []
        return [timed for item in items if (timed := el.from_timed_json_item(names.FQDN_IPS, item)) is not None]

    def fingerprint(self) -> str | None:
        # netlink dumps (firewall/rules_probe.py), under the watch's lock: a
        # commit of our other threads landing inside a dump would make it read again
        with self.watch.lock if self.watch is not None else contextlib.nullcontext():
            return rules_probe.fingerprint("inet", self.table)

    def has(self, element: el.Element) -> bool:
        # netlink for an IPv4 key: libnftables' `get element` lists every set first
        key = element_probe.ipv4_key(element.key) if isinstance(element.key, str) else None
        if key is not None:
            return element_probe.has_element("inet", self.table, element.set, key)
        return self.nft.has_element(self.table, element.set, el.key_text(element))

    def elements(self, set_name: str) -> list[el.Element]:
        return [el.from_json_item(set_name, item) for item in self.nft.list_set(self.table, set_name)]

    def admit(self, set_name: str, keys: Sequence[tuple[el.Key, int]]) -> None:
        # add, delete, add again: the only way to restart an element's timeout
        self._commit(lambda: self.nft.run_json(el.timed_json(self.table, set_name, list(keys))))

    def counters(self) -> dict[str, int]:
        # netlink: libnftables' listing fetches every set element first (and
        # starts over when a commit lands meanwhile, as under churn)
        return counter_objects.packets("inet", self.table)

    def usage(self) -> UsageReading:
        # netlink dumps: libnftables' listing caches every set's elements first
        # and starts over when a commit lands meanwhile (firewall/set_dump.py)
        return self._reading(lambda: set_dump.counters("inet", self.table, names.USAGE_SETS.values()))

    def usage_of(self, ips: Sequence[str]) -> UsageReading:
        return self._reading(lambda: element_probe.counters("inet", self.table, list(names.USAGE_SETS.values()),
                                                            list(ips)))

    def _reading(self, read: Callable[[], dict[str, dict[str, tuple[int, int]]]]) -> UsageReading:
        """The table's handle (one netlink request: libnftables would cache every
        element) and the counters; a kernel error is Unavailable, which the
        meter logs and retries (an OSError would end its task)."""
        try:
            handle = table_handle("inet", self.table)
            return (None, {}) if handle is None else (handle, read())
        except OSError as exc:   # e.g. commits kept interrupting a dump
            raise Unavailable(f"reading the usage counters: {exc}") from exc

    def delete_table(self) -> bool:
        return self.nft.delete_table(self.table)

    def ensure_first_payload(self, table: str, rules_text: str, queue: int) -> bool:
        if self.nft.chain_has_rules("ip", table, names.FIRST_PAYLOAD_QUEUE_CHAIN):
            return False
        # Until the queue rule is in, checked flows find an empty chain and the
        # host table's gate drops them: never open.
        self.nft.run(f"table ip {table} {{}}\ndelete table ip {table}\n" + rules_text)
        xt_queue.add_queue_rule(table, names.FIRST_PAYLOAD_QUEUE_CHAIN, queue)
        return True

    def delete_first_payload(self, table: str) -> bool:
        return self.nft.delete_table(table, "ip")

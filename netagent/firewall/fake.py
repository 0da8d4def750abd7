"""An in-memory FirewallDriver for unit tests (no root, no kernel).

It keeps the semantics the agent relies on: a transaction is all or nothing,
adding an element that exists is a no-op, deleting one that does not exist
fails the whole transaction (as the kernel does), and only sets declared in
rules/netagent.nft exist. `fail_next` makes the next transaction fail, to test
rollbacks."""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import Unavailable
from . import elements as el
from . import names, ruleset


class FakeFirewall:
    def __init__(self, table: str = "na"):
        self.table = table
        self.last_duration_s = 0.0
        self.first_payload: tuple[str, int] | None = None   # the first-payload table and its queue
        self.sets: dict[str, dict[el.Key, el.Key | None]] | None = None  # None: no table
        self.rules_text: str | None = None
        self.transactions = 0
        self.fail_next: str | None = None
        self.handle = 0
        self.usage_counts: dict[str, dict[str, tuple[int, int]]] = {}

    def _begin(self) -> dict[str, dict[el.Key, el.Key | None]]:
        if self.fail_next is not None:
            reason, self.fail_next = self.fail_next, None
            raise Unavailable(f"nftables transaction failed: {reason}")
        if self.sets is None:
            raise Unavailable(f"nftables transaction failed: no table inet {self.table}")
        self.transactions += 1
        return {name: dict(items) for name, items in self.sets.items()}

    def apply(self, ops: Sequence[el.Op]) -> None:
        if not ops:
            return
        work = self._begin()
        for op in ops:
            e = op.element
            if e.set not in work:
                raise Unavailable(f"nftables transaction failed: no set {e.set}")
            if op.verb == "add":
                if work[e.set].setdefault(e.key, e.value) != e.value:  # the kernel refuses it too
                    raise Unavailable(f"nftables transaction failed: {e.set} has {e.key!r} with another value")
            elif e.key in work[e.set]:
                del work[e.set][e.key]
            else:
                raise Unavailable(f"nftables transaction failed: {e.set} has no element {e.key!r}")
        self.sets = work

    def refill(self, fixed: Sequence[el.Element], dynamic: Sequence[el.Element]) -> None:
        work = self._begin()
        for name in names.STATE_SETS + names.STATE_MAPS:
            work[name] = {}
        self.sets = _filled(work, [*fixed, *dynamic])

    def reload(self, rules_text: str, fixed: Sequence[el.Element], dynamic: Sequence[el.Element]) -> None:
        if self.fail_next is not None:
            self._begin()
        kept = dict((self.sets or {}).get(names.FQDN_IPS, {}))   # DNS admissions survive, as in HostTable
        self.sets = _filled({name: {} for name in names.ALL}, [*fixed, *dynamic])
        self.sets[names.FQDN_IPS] = kept
        self.rules_text = rules_text
        self.transactions += 1
        self.handle += 1

    def fingerprint(self) -> str | None:
        return ruleset.fingerprint(self.rules_text) if self.sets is not None and self.rules_text else None

    def generation(self) -> int | None:
        return None   # the keeper then lists (fingerprints) on every check

    def has(self, element: el.Element) -> bool:
        return self.sets is not None and element.key in self.sets.get(element.set, {})

    def elements(self, set_name: str) -> list[el.Element]:
        items = (self.sets or {}).get(set_name, {})
        return [el.Element(set_name, k, v) for k, v in items.items()]

    def admit(self, set_name: str, keys: Sequence[tuple[el.Key, int]]) -> None:
        work = self._begin()
        for key, _ttl in keys:
            work[set_name][key] = None
        self.sets = work

    def counters(self) -> dict[str, int]:
        return {}

    def ensure_first_payload(self, table: str, rules_text: str, queue: int) -> bool:
        loaded = self.first_payload == (table, queue)
        self.first_payload = (table, queue)
        return not loaded

    def delete_first_payload(self, table: str) -> bool:
        existed, self.first_payload = self.first_payload is not None, None
        return existed

    def usage(self) -> tuple[int | None, dict[str, dict[str, tuple[int, int]]]]:
        """Counters the test put in `usage_counts` (set -> ip -> (packets, bytes)),
        for the elements that exist; a reload is a new table (a new handle)."""
        if self.sets is None:
            return None, {}
        return self.handle, {name: {str(ip): self.usage_counts.get(name, {}).get(str(ip), (0, 0))
                                    for ip in self.sets.get(name, {})} for name in names.USAGE_SETS.values()}

    def usage_of(self, ips: Sequence[str]) -> tuple[int | None, dict[str, dict[str, tuple[int, int]]]]:
        handle, by_set = self.usage()
        return handle, {name: {ip: c for ip, c in keys.items() if ip in ips} for name, keys in by_set.items()}

    def delete_table(self) -> bool:
        existed, self.sets, self.rules_text = self.sets is not None, None, None
        return existed

    # ---- for assertions ---------------------------------------------------------

    def content(self) -> set[el.Element]:
        """Every element of every set, as a set of Elements."""
        return {el.Element(name, k, v) for name, items in (self.sets or {}).items() for k, v in items.items()}


def _filled(work: dict[str, dict[el.Key, el.Key | None]],
            elements: Sequence[el.Element]) -> dict[str, dict[el.Key, el.Key | None]]:
    for e in elements:
        work[e.set][e.key] = e.value
    return work

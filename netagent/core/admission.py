"""DNS admission: which sandbox may resolve which names, and the fqdn_ips
elements that let it reach the answers for their TTL. The DNS proxy calls
`policy_of` and `admit` (injected callables); releases and narrowing policy
changes call `forget` on the cleaner thread."""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from ..addressing import AddressPlan
from ..firewall import elements as el
from ..firewall import names
from ..firewall.driver import FirewallDriver
from ..policy import CompiledPolicy
from .inventory import Inventory


class DnsAdmission:
    def __init__(self, addresses: AddressPlan, inventory: Callable[[], Inventory],
                 on_host: Callable[[Callable[[FirewallDriver], None]], Awaitable[None]]):
        self.addresses = addresses
        self.inventory = inventory
        self.on_host = on_host   # runs fn(driver) on the host worker
        self._admitted: dict[tuple[str, str], float] = {}  # (sandbox IP, address) -> expiry (monotonic)
        # (sandbox IP, address) -> {asked name: expiry}: which names admitted an
        # address, for the first-payload check of a payload that names nothing
        self._names: dict[tuple[str, str], dict[str, float]] = {}

    def policy_of(self, sandbox_ip: str) -> CompiledPolicy | None:
        """The policy of the sandbox using this address, for its resolver (None:
        no sandbox). Compiled once, at allocate, with the host default frozen in."""
        try:
            idx = self.addresses.index_of_sandbox_ip(sandbox_ip)
        except ValueError:
            return None
        rec = self.inventory().owner_of_slot(idx)
        return rec.compiled if rec else None

    async def admit(self, sandbox_ip: str, addresses: list[tuple[str, int]], name: str) -> None:
        """Let the sandbox reach these addresses, answered for `name`, for their
        TTL (fresh timeout even if already admitted). An address whose admission
        still has at least half of the new TTL to run is left as it is: no
        transaction."""
        now = time.monotonic()
        if len(self._names) > 65536:   # bound the memory: drop expired names
            self._names = {k: v for k, v in self._names.items() if max(v.values()) > now}
        for a, ttl in addresses:
            asked = self._names.setdefault((sandbox_ip, a), {})
            asked[name] = max(asked.get(name, 0.0), now + ttl)
        fresh = [(a, ttl) for a, ttl in addresses if self._admitted.get((sandbox_ip, a), 0.0) < now + ttl / 2]
        if not fresh:
            return
        for a, ttl in fresh:
            self._admitted[(sandbox_ip, a)] = now + ttl
        keys: list[tuple[el.Key, int]] = [((sandbox_ip, a), ttl) for a, ttl in fresh]
        await self.on_host(lambda fw: fw.admit(names.FQDN_IPS, keys))

    def names_for(self, sandbox_ip: str, address: str) -> frozenset[str]:
        """The names whose unexpired answers admitted `address` for this sandbox."""
        now = time.monotonic()
        asked = self._names.get((sandbox_ip, address), {})
        return frozenset(n for n, until in asked.items() if until > now)

    def names_seen(self, sandbox_ip: str, address: str) -> frozenset[str]:
        """Every name whose answer admitted `address` for this sandbox, expired or
        not (the flow record, at a flow's end). Safe from another thread: the
        copy is one C call under the GIL."""
        return frozenset(dict(self._names.get((sandbox_ip, address), {})))

    def forget(self, fw: FirewallDriver, sandbox_ip: str) -> None:
        """Worker thread: end every admission of this sandbox."""
        for key in [k for k in list(self._admitted) if k[0] == sandbox_ip]:
            self._admitted.pop(key, None)
        for key in [k for k in list(self._names) if k[0] == sandbox_ip]:
            self._names.pop(key, None)
        gone = [e for name in (names.FQDN_IPS, names.INTERCEPT_DST) for e in fw.elements(name)
                if isinstance(e.key, tuple) and e.key[0] == sandbox_ip]
        fw.apply(el.delete(gone))

    def clear(self) -> None:
        """The table was reloaded. A reload carries the kernel's admissions
        over, but one that replaced a deleted table found none: forget what was
        committed, so the next answer for an address admits it again. The names
        stay: they only explain elements that are there."""
        self._admitted.clear()

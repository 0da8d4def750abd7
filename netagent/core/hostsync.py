"""The host table as a whole: full syncs (reload if the rules drifted, else
flush and refill every state set) and the watcher that restores a flushed or
edited table."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..firewall.driver import FirewallDriver
from ..firewall.elements import Element
from ..firewall.generation import GenerationWatch

log = logging.getLogger("netagent.hostsync")

# With an unchanged ruleset generation the table is still listed this often:
# a guard against a foreign commit taken for ours, which needs a commit of
# ours that the kernel did not count racing one that it did.
FULL_CHECK_EVERY_S = 60.0


class HostTableKeeper:
    def __init__(self, rules_text: Callable[[], str], fixed: Callable[[], list[Element]],
                 on_reloaded: Callable[[], None], watch: GenerationWatch | None = None):
        self.rules_text = rules_text   # the rendered host table
        self.generations = watch or GenerationWatch()
        self.listings = 0              # full checks: the table listed and fingerprinted
        self._listed_at = float("-inf")
        self.fixed = fixed             # config elements (uplinks, always_deny...)
        self.on_reloaded = on_reloaded
        self.fingerprint: str | None = None   # of the rules we last loaded
        self.last_reloaded = False
        self.restores = 0

    def sync(self, fw: FirewallDriver, dynamic: list[Element]) -> float:
        """Worker thread: one transaction that (re)loads the table if it drifted
        and replaces every element with these."""
        if fw.fingerprint() == self.fingerprint is not None:
            fw.refill(self.fixed(), dynamic)
            self.last_reloaded = False
        else:
            fw.reload(self.rules_text(), self.fixed(), dynamic)
            self.fingerprint = fw.fingerprint()
            self.on_reloaded()  # the admissions may be gone (a deleted table): commit them again
            self.last_reloaded = True
        return fw.last_duration_s

    def current(self, fw: FirewallDriver, now: float) -> str | None:
        """Worker thread: the table's fingerprint, or ours unlisted when no commit
        but our own has happened since the table last matched it."""
        generation = fw.generation()
        if self.generations.unchanged(generation) and now - self._listed_at < FULL_CHECK_EVERY_S:
            return self.fingerprint
        found = fw.fingerprint()
        self.listings += 1
        self._listed_at = now
        if found is not None and found == self.fingerprint:
            if generation is not None:
                with self.generations.lock:
                    self.generations.listed(generation)   # read before the listing: never ahead of it
        return found

    async def watch(self, interval: Callable[[], float], current: Callable[[], Awaitable[str | None]],
                    resync: Callable[[], Awaitable[object]], restored: Callable[[], None]) -> None:
        """Forever: compare the table's fingerprint with ours; resync on a difference."""
        while True:
            await asyncio.sleep(interval())
            try:
                fp = await current()
                if fp != self.fingerprint:
                    log.warning("host table is %s; restoring it", "missing" if fp is None else "changed")
                    await resync()
                    self.restores += 1
                    restored()
            except Exception:
                log.exception("ruleset check failed")

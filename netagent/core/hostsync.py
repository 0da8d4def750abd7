"""The host table as a whole: full syncs (reload if the rules drifted, else
flush and refill every state set) and the watcher that restores a flushed or
edited table."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..firewall.driver import FirewallDriver
from ..firewall.elements import Element

log = logging.getLogger("netagent.hostsync")


class HostTableKeeper:
    def __init__(self, rules_text: Callable[[], str], fixed: Callable[[], list[Element]],
                 on_reloaded: Callable[[], None]):
        self.rules_text = rules_text   # the rendered host table
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
            self.on_reloaded()  # a reloaded table has no fqdn_ips
            self.last_reloaded = True
        return fw.last_duration_s

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

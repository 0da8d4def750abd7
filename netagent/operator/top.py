"""`netagent top` and the rate columns of `netagent ls`: per-sandbox rates
sampled in the host netns (linkstats.py), as rows for render.table."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import linkstats
from .kernel import in_netns
from .render import table

if TYPE_CHECKING:
    from ..config import Config

CLEAR_HOME = "\x1b[H\x1b[2J"
COLUMNS = ["sandbox", "slot", "sandbox_ip", "rx_pps", "rx", "tx_pps", "tx", "new_conn_s"]
VERDICT_COLUMNS = ["sandbox", "destination", "check", "allowed", "refused"]
Verdict = dict[str, Any]   # {"sandbox", "destination", "reason", "allowed", "denied"}


def add_verdicts(totals: dict[tuple[str, str, str], list[int]], events: list[Verdict]) -> None:
    """Sum FIRST_PAYLOAD_VERDICTS event entries into totals per (sandbox, destination, check)."""
    for v in events:
        t = totals.setdefault((v["sandbox"], v["destination"], v["reason"]), [0, 0])
        t[0] += int(v["allowed"])
        t[1] += int(v["denied"])


def verdict_rows(totals: dict[tuple[str, str, str], list[int]], sandboxes: set[str]) -> list[dict[str, Any]]:
    """Allocated sandboxes' first-payload verdicts per destination, most refused first."""
    return [{"sandbox": s, "destination": d, "check": r, "allowed": a, "refused": n}
            for (s, d, r), (a, n) in sorted(totals.items(), key=lambda kv: (-kv[1][1], kv[0])) if s in sandboxes]


def rates(config: Config, sandboxes: list[dict[str, Any]], interval: float,
          connections: bool = True) -> dict[str, linkstats.Rates]:
    """Rates by sandbox id, sampled over `interval` seconds."""
    veths = {s["network"]["hostVeth"]: s["network"]["sandboxIp"] for s in sandboxes}
    by_veth = in_netns(config.host_netns, lambda: linkstats.sample(veths, interval, connections))
    return {s["sandboxId"]: by_veth[s["network"]["hostVeth"]] for s in sandboxes}


def rows(sandboxes: list[dict[str, Any]], by_id: dict[str, linkstats.Rates]) -> list[dict[str, Any]]:
    out = []
    for s in sorted(sandboxes, key=lambda s: -(by_id[s["sandboxId"]].rx_bps + by_id[s["sandboxId"]].tx_bps)):
        r = by_id[s["sandboxId"]]
        out.append({"sandbox": s["sandboxId"], "slot": s["network"]["slot"], "sandbox_ip": s["network"]["sandboxIp"],
                    "rx_pps": f"{r.rx_pps:.0f}", "rx": human_rate(r.rx_bps), "tx_pps": f"{r.tx_pps:.0f}",
                    "tx": human_rate(r.tx_bps),
                    "new_conn_s": "-" if r.new_conns_ps is None else f"{r.new_conns_ps:.1f}"})
    return out


def human_rate(bytes_per_s: float) -> str:
    value, unit = bytes_per_s, "B/s"
    for next_unit in ("KB/s", "MB/s", "GB/s"):
        if value < 1000:
            break
        value, unit = value / 1000, next_unit
    return f"{value:.0f} {unit}" if unit == "B/s" else f"{value:.1f} {unit}"


def run(config: Config, list_sandboxes: Callable[[], list[dict[str, Any]]], interval: float,
        samples: int | None, as_json: bool, emit: Callable[[Any, bool, str], None],
        new_verdicts: Callable[[], list[Verdict]] = list) -> None:
    """Sample and print until `samples` are shown (None: forever). On a TTY
    the screen is redrawn in place; otherwise each sample is printed.
    `new_verdicts`: first-payload verdict entries of events since the last call."""
    live = sys.stdout.isatty() and not as_json
    n = 0
    totals: dict[tuple[str, str, str], list[int]] = {}
    while samples is None or n < samples:
        sandboxes = list_sandboxes()
        by_id = rates(config, sandboxes, interval)
        add_verdicts(totals, new_verdicts())
        verdicts = verdict_rows(totals, {s["sandboxId"] for s in sandboxes})
        data = [{"sandbox": s["sandboxId"], "slot": s["network"]["slot"],
                 "sandboxIp": s["network"]["sandboxIp"], **by_id[s["sandboxId"]].to_dict(),
                 "firstPayloadVerdicts": [v for v in verdicts if v["sandbox"] == s["sandboxId"]]}
                for s in sandboxes]
        human = table(rows(sandboxes, by_id), COLUMNS)
        if verdicts:
            human += "\nfirst-payload verdicts (SNI/Host), per destination:\n" + table(verdicts, VERDICT_COLUMNS)
        if live:
            human = (f"{CLEAR_HOME}netagent top: {len(sandboxes)} sandboxes, every {interval:g} s "
                     f"({time.strftime('%H:%M:%S')}); Ctrl-C quits\n\n{human}")
        emit(data, as_json, human)
        sys.stdout.flush()
        n += 1

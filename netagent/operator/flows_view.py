"""`netagent flows`: the command; its time arguments and table rows are pure."""
from __future__ import annotations

import argparse
import re
import time
from datetime import datetime
from typing import Any

from .render import EXIT_OK, EXIT_USAGE, emit, fail, table

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
COLUMNS = ["end", "dir", "proto", "destination", "domain", "sent", "received", "duration", "ended"]


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from '1700000000', an ISO-8601 time ('2026-12-07T22:00:00Z')
    or a time ago ('90s', '10m', '2h', '1d'). ValueError otherwise."""
    text = text.strip()
    now = time.time() if now is None else now
    if m := _AGO.match(text):
        return now - float(m.group(1)) * UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (unix seconds, ISO-8601, or ago like 10m, 2h, 1d)") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or +00:00)")
    return when.timestamp()


def row(flow: dict[str, Any]) -> dict[str, Any]:
    """One record (as MessageToDict prints it) as table cells."""
    start, end = int(flow.get("startUnixMs", 0)), int(flow.get("endUnixMs", 0))
    port = flow.get("destinationPort", 0)
    ended = flow.get("endReason", "")
    return {"end": datetime.fromtimestamp(end / 1000).strftime("%Y-%m-%d %H:%M:%S"),
            "dir": "out" if flow.get("direction") == "egress" else "in",
            "proto": flow.get("protocol", ""),
            "destination": f"{flow.get('destination', '')}:{port}" if port else flow.get("destination", ""),
            "domain": flow.get("domain") or "-",
            "sent": f"{int(flow.get('bytesSent', 0))} B/{int(flow.get('packetsSent', 0))}p",
            "received": f"{int(flow.get('bytesReceived', 0))} B/{int(flow.get('packetsReceived', 0))}p",
            "duration": f"{max(0, end - start) / 1000:.1f}s",
            "ended": ended + (" (agent down)" if flow.get("whileDown") else "")}


def command(args: argparse.Namespace, client: Any) -> int:
    from .commands import to_dict
    try:
        since = parse_time(args.since) if args.since else 0.0
        until = parse_time(args.until) if args.until else 0.0
    except ValueError as exc:
        return fail(str(exc), EXIT_USAGE)
    if not 1 <= args.limit <= 10_000:
        return fail("--limit must be 1-10000", EXIT_USAGE)
    reply = client.flows(args.sandbox, since_unix_ms=int(since * 1000), until_unix_ms=int(until * 1000),
                         limit=args.limit)
    records = [to_dict(f) for f in reply.flows]
    human = table([row(f) for f in records], COLUMNS)
    if reply.truncated:
        human += f"\n(more records match: the oldest {args.limit} shown; narrow with --since/--until or raise --limit)"
    emit({"flows": records, "truncated": reply.truncated}, args.json, human)
    return EXIT_OK

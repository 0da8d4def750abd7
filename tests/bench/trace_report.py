"""Where a traced daemon's allocate time went (tests/bench/latency_trace/).

    python -m tests.bench.trace_report TRACE.jsonl [--prefix churn-]

Joins each Allocate's handler, core and submit records with the commit that
carried it, and prints JSON: p50/p90/p99/max of each phase (handler: the gRPC
method; outside_core: the servicer's own part; queue: waiting for the
committer; plan, nft (the host thread's transaction, thread hops included),
db (SQLite commit), after (hooks); reply: back to the caller after the
commit), the slowest allocates with their phases, the event-loop
callbacks and worker-thread calls that took longest in all, and the cyclic
GC's collections over 1 ms.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p))], 2)


def phases_of(events: list[dict[str, Any]], prefix: str) -> list[dict[str, float]]:
    by = {kind: {e["sid"]: e for e in events if e["k"] == kind} for kind in ("core", "submit")}
    commit_of = {sid: e for e in events if e["k"] == "commit" for kind, sid in e["ops"] if kind == "Allocate"}
    rows = []
    for h in (e for e in events if e["k"] == "handler" and e["sid"].startswith(prefix)):
        core, submit, commit = by["core"].get(h["sid"]), by["submit"].get(h["sid"]), commit_of.get(h["sid"])
        if not (core and submit and commit):
            continue   # an allocate answered from memory (a retry): no commit
        queue = (commit["t"] - submit["t"]) * 1e3
        rows.append({"handler": h["ms"], "outside_core": h["ms"] - core["ms"], "queue": queue,
                     "plan": commit["ph"].get("plan", 0.0), "nft": commit["ph"].get("nft", 0.0),
                     "db": commit["ph"].get("db", 0.0), "after": commit["ph"].get("after", 0.0),
                     "reply": submit["ms"] - queue - commit["ms"], "burst": len(commit["ops"])})
    return rows


def top(events: list[dict[str, Any]], kind: str, key: str, n: int = 10) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["k"] == kind:
            groups[f'{e.get("thr", "loop")} {e[key]}'].append(e)
    ranked = sorted(groups.items(), key=lambda g: -sum(e["ms"] for e in g[1]))[:n]
    return [{"what": name, "n": len(es), "sum_ms": round(sum(e["ms"] for e in es)), "max_ms": max(e["ms"] for e in es),
             "max_wait_ms": max((e.get("wait_ms", 0.0) for e in es), default=0.0)} for name, es in ranked]


def report(path: Path, prefix: str = "churn-") -> dict[str, Any]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line]
    handlers = [e for e in events if e["k"] == "handler" and e["sid"].startswith(prefix)]
    if not handlers:
        return {"allocates": 0}
    start = min(e["t"] for e in handlers) - 0.5
    events = [e for e in events if e["t"] >= start]   # the measured phase only
    rows = phases_of(events, prefix)
    return {
        "allocates": len(rows),
        "phases_ms": {k: {"p50": pct([r[k] for r in rows], .5), "p90": pct([r[k] for r in rows], .9),
                          "p99": pct([r[k] for r in rows], .99), "max": round(max(r[k] for r in rows), 1)}
                      for k in rows[0]} if rows else {},
        "slowest": [{k: round(v, 1) for k, v in r.items()} for r in sorted(rows, key=lambda r: -r["handler"])[:10]],
        "loop_callbacks_over_3ms": top(events, "loop", "cb"),
        "thread_calls_over_3ms": top(events, "thr", "fn"),
        "gc_over_1ms": gc_pauses(events),
    }


def gc_pauses(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Cyclic GC collections over 1 ms by generation: count, sum, max."""
    out: dict[str, Any] = {}
    for gen in (0, 1, 2):
        ms = [e["ms"] for e in events if e["k"] == "gc" and e["gen"] == gen]
        if ms:
            out[f"gen{gen}"] = {"n": len(ms), "sum_ms": round(sum(ms), 1), "max_ms": max(ms),
                                "over_5ms": sum(1 for m in ms if m > 5)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", type=Path)
    ap.add_argument("--prefix", default="churn-", help="sandbox ids of the measured allocates")
    args = ap.parse_args()
    print(json.dumps(report(args.trace, args.prefix), indent=2))


if __name__ == "__main__":
    main()

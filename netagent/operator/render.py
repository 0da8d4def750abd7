"""Output for operators: aligned tables for people, JSON for scripts."""
from __future__ import annotations

import json
import sys
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def pairs(data: dict[str, Any]) -> str:
    width = max(len(k) for k in data)
    return "\n".join(f"{k.ljust(width)}  {_flat(v)}" for k, v in data.items())


def emit(data: Any, as_json: bool, human: str, *, compact_when_piped: bool = False) -> None:
    """`compact_when_piped`: JSON on one line unless stdout is a terminal (the same
    content; `indent` forces json's pure-Python encoder, 4x slower: ls at 2,000)."""
    if not as_json:
        print(human)
    elif compact_when_piped and not sys.stdout.isatty():
        print(json.dumps(data, sort_keys=True, separators=(",", ":")))
    else:
        print(json.dumps(data, indent=2, sort_keys=True))


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"netagent: {message}", file=sys.stderr)
    return code


def _flat(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_flat(x)}" for k, x in v.items()) or "-"
    if isinstance(v, list | tuple):
        return ", ".join(_flat(x) for x in v) or "-"
    return "-" if v is None or v == "" else str(v)

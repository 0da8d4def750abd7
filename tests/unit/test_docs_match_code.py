"""Docs that name what the code has: cli.md's verbs are the parser's, and
metrics.md's drop reasons are the host table's named drop counters."""
from __future__ import annotations

import re
from pathlib import Path

from netagent.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def parser_verbs() -> set[str]:
    (sub,) = [a for a in build_parser([])._actions if a.dest == "command"]
    return set(sub.choices)


def test_cli_md_names_every_verb_of_the_parser_and_no_other():
    text = (REPO / "docs/cli.md").read_text()
    table = re.search(r"^\| command \| what it answers \|\n\|---\|---\|\n((?:\|.*\n)+)", text, re.M).group(1)
    listed = {span.split()[0] for row in table.splitlines() for span in re.findall(r"`([^`]+)`", row.split(" | ")[0])}
    assert listed == parser_verbs()
    used = set(re.findall(r"^\$ netagent ([a-z-]+)", text, re.M)) | set(re.findall(r"`netagent ([a-z-]+)", text))
    assert used <= parser_verbs(), sorted(used - parser_verbs())


def test_metrics_md_lists_every_drop_counter_of_the_host_table():
    rules = (REPO / "rules/netagent.nft").read_text()
    counters = set(re.findall(r"^\s*counter drop_(\w+) \{", rules, re.M))
    row = next(line for line in (REPO / "docs/metrics.md").read_text().splitlines()
               if line.startswith("| `netagent_dropped_packets_total`"))
    documented = set(re.findall(r"`([a-z0-9_]+)`", row.split(" | ")[2])) - {"reason"}   # the label's name
    assert documented == counters

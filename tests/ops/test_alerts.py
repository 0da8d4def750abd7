"""The shipped alert rules and dashboard (netagent/ops/): valid for promtool,
each alert fired by `promtool test rules`, and every metric they name exported
by a real agent's /metrics and a real edge control plane's."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from netagent.registry.sqlite import SqliteRegistry
from tests.edge.hap import running_edge
from tests.service.daemon import Daemon, write_config

OPS = Path(__file__).resolve().parents[2] / "netagent" / "ops"
ALERTS, DASHBOARD = OPS / "alerts.yml", OPS / "dashboard.json"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")
NAME = re.compile(r"\b(netagent_[a-z0-9_]+|up)\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def names_in(exprs: list[str]) -> set[str]:
    return {n for e in exprs for n in NAME.findall(e)}


def exported(text: str) -> set[str]:
    """Every series name a scrape can carry, also for labelled families with no sample yet."""
    out = set()
    for family in text_string_to_metric_families(text):
        out |= {s.name for s in family.samples}
        out |= {"counter": {family.name + "_total"}, "gauge": {family.name},
                "histogram": {family.name + s for s in ("_bucket", "_count", "_sum")}}.get(family.type, set())
    return out


def test_promtool_accepts_the_rules_and_fires_every_alert_from_sample_series(tmp_path):
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    fired = {case["alertname"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
             for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == {rule["alert"] for rule in alert_rules()}


def test_the_dashboards_queries_parse(tmp_path):
    """Each query as a recording rule: promtool parses the PromQL (Grafana's variables as `.*`)."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$instance", ".*").replace("$edge", ".*")}
        for i, e in enumerate(dashboard_exprs())]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_every_metric_in_the_alerts_and_the_dashboard_is_exported(bed, tmp_path):
    wanted = names_in([r["expr"] for r in alert_rules()] + dashboard_exprs()) - {"up"}   # up: Prometheus's own
    daemon = Daemon(write_config(bed, tmp_path)).start()
    try:
        agent = exported(daemon.scrape(bed.host))
    finally:
        daemon.stop()
    registry = SqliteRegistry(f"sqlite:///{tmp_path / 'registry.db'}")
    await registry.connect()
    try:
        async with running_edge(tmp_path / "edge", registry) as (_, control):
            edge = exported(generate_latest(control.metrics.registry).decode())
    finally:
        await registry.close()
    assert not wanted - agent - edge, f"not exported: {sorted(wanted - agent - edge)}"
    assert {n for n in wanted if n.startswith("netagent_edge_")} <= edge

"""The CLI takes its facts from the running agent, and `teardown` takes a host
out of service."""
from __future__ import annotations

import json
import signal

from netagent import netns
from netagent.operator.teardown import running
from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import wait_until


def cli(config, *args: str) -> tuple[int, str, str]:
    res = sh.run(sh.PYTHON, "-m", "netagent", *args, "--config", str(config), check=False)
    return res.returncode, res.stdout, res.stderr


def test_commands_use_the_running_agents_facts_not_their_own_file(bed, daemon, tmp_path):
    """The CLI's file names another uplink, registry and node than the agent
    runs with (as NETAGENT_* overrides on the agent would): doctor still checks
    what the agent uses."""
    text = daemon.config.read_text()
    other = tmp_path / "other.toml"
    other.write_text(text.replace('uplink = "up0"', 'uplink = "nosuch0"').replace('node_id = "test-node"',
                     'node_id = "other-node"') + f'registry_url = "sqlite://{tmp_path}/elsewhere/registry.db"\n')
    code, out, _ = cli(other, "doctor", "--json")
    checks = {c["check"]: c for c in json.loads(out)}
    assert checks["uplink"]["status"] == "ok" and checks["uplink"]["detail"] == "up0 is up", checks["uplink"]
    assert checks["registry"]["status"] == "ok" and "test-node" in checks["registry"]["detail"], checks["registry"]
    assert code == 0, out


def test_teardown_refuses_while_the_agent_runs_or_sandboxes_are_allocated_then_removes_everything(bed, tmp_path):
    # the interceptor's run dir under tmp: teardown removes it (never the host's /run/netagent)
    config = write_config(bed, tmp_path, pool_size=2, intercept={"run_dir": str(tmp_path / "intercept-run")})
    daemon = Daemon(config).start()
    try:
        with daemon.client() as c:
            c.allocate("td-1")
            c.expose("td-1", 80)
        code, _, err = cli(config, "teardown", "--force")
        assert code == 1 and "agent is running" in err, err
    finally:
        daemon.stop()
    prefix = bed.agent_prefix
    before = netns.list_names(f"{prefix}-")
    assert len(before) >= 2

    code, _, err = cli(config, "teardown")
    assert code == 1 and "1 sandbox(es) are still allocated" in err and "--force" in err, err
    assert netns.list_names(f"{prefix}-") == before   # refused: nothing removed

    assert sh.run("nft", "list", "table", "ip", f"{prefix}_fp", ns=bed.host, check=False).returncode == 0
    code, out, _ = cli(config, "teardown", "--force", "--json")
    done = json.loads(out)
    assert code == 0 and done["allocations"] == 1 and done["netns"] == len(before) and done["table"], out
    assert netns.list_names(f"{prefix}-") == []
    assert not [n for n in sh.links(bed.host) if n.startswith(f"{prefix}v")]
    assert sh.run("nft", "list", "table", "inet", prefix, ns=bed.host, check=False).returncode != 0
    assert sh.run("nft", "list", "table", "ip", f"{prefix}_fp", ns=bed.host, check=False).returncode != 0
    assert not (tmp_path / "state" / "state.db").exists()
    # Idempotent: a second run finds nothing and succeeds.
    code, out, _ = cli(config, "teardown", "--json")
    assert code == 0 and json.loads(out)["netns"] == 0, out


def test_teardown_stops_the_interceptor_a_killed_agent_left_and_removes_every_file_the_agent_made(bed, tmp_path):
    state, run_dir = tmp_path / "state", tmp_path / "intercept-run"
    config = write_config(bed, tmp_path, pool_size=1, intercept={"run_dir": str(run_dir)})
    daemon = Daemon(config).start()
    try:
        with daemon.client() as c:
            c.allocate("td-i")
            c.set_secret("td-i", "K", "teardown-secret-value")
            c.set_request_rules("td-i", [{"id": "a", "domain": "api.test", "transforms": [
                {"op": "set", "header": "Authorization", "value": "${secret:K}"}]}])    # the interceptor starts
        pid = int((run_dir / "haproxy.pid").read_text())
        assert wait_until(lambda: (state / "flows.db").exists(), timeout=30)
    finally:
        daemon.stop(signal.SIGKILL)        # no stop ran: the interceptor is left running
    assert running(pid)
    (state / "requests.jsonl").write_text("{}\n")     # as if a request had been recorded
    code, out, _ = cli(config, "teardown", "--force", "--json")
    done = json.loads(out)
    assert code == 0 and done["interceptor"] == pid, out
    assert wait_until(lambda: not running(pid), timeout=10), "the interceptor still runs"
    assert not run_dir.exists() and not (state / "intercept").exists()
    left = sorted(p.name for p in state.iterdir())
    assert set(left) <= {"registry.db", "registry.db-wal", "registry.db-shm"}, left   # the registry's own

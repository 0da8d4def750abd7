"""The operator CLI against a daemon in the test bed."""
from __future__ import annotations

import json

from tests.testbed import sh


def cli(daemon, *args: str) -> tuple[int, str, str]:
    res = sh.run(sh.PYTHON, "-m", "netagent", *args, "--config", str(daemon.config), check=False)
    return res.returncode, res.stdout, res.stderr


def test_status_ls_show_with_drift_and_exit_codes(bed, daemon):
    code, out, _ = cli(daemon, "status", "--json")
    info = json.loads(out)
    assert code == 0 and info["nodeId"] == "test-node" and info["health"] == "SERVING"
    assert info["ruleset"] == "loaded"

    code, out, _ = cli(daemon, "allocate", "cli-1", "--label", "team=a", "--internet", "off",
                       "--allow", "203.0.113.0/24")
    assert code == 0 and "boot arg: ip=169.254.0.21" in out
    assert cli(daemon, "expose", "cli-1", "8080")[0] == 0
    code, out, _ = cli(daemon, "ls", "--label", "team=a")
    assert code == 0 and "cli-1" in out and "8080->" in out and "SANDBOX" in out

    code, out, _ = cli(daemon, "show", "cli-1")
    assert code == 0 and "drift: none" in out, out
    sbx = json.loads(cli(daemon, "show", "cli-1", "--json")[1])
    ip = sbx["network"]["sandboxIp"]
    # An operator (or a bug) removes an element by hand: show flags it.
    sh.run("nft", "delete", "element", "inet", bed.agent_prefix, "allow_net", f"{{ {ip} . 203.0.113.0/24 }}",
           ns=bed.host)
    code, out, _ = cli(daemon, "show", "cli-1")
    assert code == 1 and "DRIFT" in out and "allow_net" in out, out
    # ... and resync repairs it (the element comes back from state).
    code, out, _ = cli(daemon, "resync", "--json")
    assert code == 0 and json.loads(out)["elements"] > 0, out
    code, out, _ = cli(daemon, "show", "cli-1")
    assert code == 0 and "drift: none" in out, out

    code, out, _ = cli(daemon, "policy", "set", "cli-1", "--internet", "on", "--json")
    assert code == 0 and json.loads(out)["internet"] is True
    assert cli(daemon, "release", "cli-1")[0] == 0
    code, _, err = cli(daemon, "show", "cli-1")
    assert code == 3 and "not allocated" in err


def test_cli_says_when_the_agent_is_not_running(bed, tmp_path):
    from tests.service.daemon import write_config
    cfg = write_config(bed, tmp_path)
    res = sh.run(sh.PYTHON, "-m", "netagent", "ls", "--config", str(cfg), check=False)
    assert res.returncode == 1
    assert "not running" in res.stderr and "systemctl start netagent" in res.stderr
    assert "Traceback" not in res.stderr


def test_gc_finds_and_removes_a_leaked_netns(bed, daemon):
    leaked = f"{bed.agent_prefix}-9999"
    sh.ip("netns", "add", leaked)
    try:
        code, out, _ = cli(daemon, "gc", "--json")
        found = json.loads(out)["leaked"]
        assert code == 0 and {"kind": "netns", "name": leaked} in found
        assert all(o["name"] == leaked for o in found), found  # the warm pool's slots are not leaks
        assert leaked in sh.netns_list()  # not without --apply
        code, out, _ = cli(daemon, "gc", "--apply")
        assert code == 0 and "removed" in out
        assert leaked not in sh.netns_list()
    finally:
        sh.ip("netns", "del", leaked, check=False)


def test_doctor_checks_the_host(bed, daemon):
    code, out, _ = cli(daemon, "doctor", "--json")
    checks = {c["check"]: c for c in json.loads(out)}
    assert code == 0, out
    for name in ("/dev/net/tun", "nf_tables", "ip_forward", "uplink", "conflicting firewall", "host port range"):
        assert checks[name]["status"] in ("ok", "warn"), checks[name]
    assert checks["uplink"]["detail"] == "up0 is up"
    # A forward DROP policy in another table is reported with its fix.
    sh.run("nft", "add table ip filter; add chain ip filter FORWARD { type filter hook forward priority 0; "
           "policy drop; }", ns=bed.host)
    code, out, _ = cli(daemon, "doctor", "--json")
    fw = next(c for c in json.loads(out) if c["check"] == "conflicting firewall")
    assert fw["status"] == "warn" and "FORWARD policy drop" in fw["detail"] and fw["fix"]

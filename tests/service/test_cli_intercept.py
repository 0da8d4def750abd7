"""Request rules and secrets through the daemon's gRPC API (netagent.v1.Interception)
and the CLI: names out, never values; a missing secret refused by name."""
from __future__ import annotations

import json

import grpc
import pytest

from tests.service.daemon import Daemon, write_config
from tests.testbed import sh

SECRET = "sk-cli-0a1b2c3d4e5f-never-printed"


@pytest.fixture
def daemon(bed, tmp_path):
    """The service daemon, its interceptor's files under the test's tmp (never the host's /run/netagent)."""
    d = Daemon(write_config(bed, tmp_path, intercept={"run_dir": str(tmp_path / "intercept-run")})).start()
    try:
        yield d
    finally:
        d.stop()


def cli(daemon, *args: str, stdin: str | None = None) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    res = sh.run(sh.PYTHON, "-m", "netagent", *args, "--config", str(daemon.config), check=False, input=stdin)
    return res.returncode, res.stdout, res.stderr


def test_rules_and_secrets_through_the_cli_and_grpc(bed, daemon, tmp_path):
    rules = [{"id": "auth", "domain": "api.test", "methods": ["GET", "POST"], "path": "/v1/",
              "transforms": [{"op": "set", "header": "Authorization", "value": "Bearer ${secret:API_KEY}"}]}]
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(rules))
    assert cli(daemon, "allocate", "ic-cli")[0] == 0
    code, out, err = cli(daemon, "rules", "set", "ic-cli", str(rules_file))
    assert code != 0 and "API_KEY" in err and "SetSecret" in err, (out, err)
    code, out, _ = cli(daemon, "rules", "show", "ic-cli", "--json")
    assert code == 0 and json.loads(out).get("rules", []) == []

    code, out, _ = cli(daemon, "secrets", "set", "ic-cli", "API_KEY", stdin=SECRET + "\n")
    assert code == 0 and "API_KEY" in out and SECRET not in out
    code, out, err = cli(daemon, "secrets", "set", "ic-cli", "BAD", stdin="a\rb\n")
    assert code != 0 and "CR, LF" in err
    code, out, _ = cli(daemon, "rules", "set", "ic-cli", str(rules_file), "--json")
    assert code == 0, out
    got = json.loads(out)["rules"][0]
    assert got["id"] == "auth" and got["path"] == "/v1/" and got["ports"] == [80, 443]
    assert got["transforms"][0]["value"] == "Bearer ${secret:API_KEY}"      # the template, not the value
    code, out, err = cli(daemon, "secrets", "delete", "ic-cli", "API_KEY")
    assert code != 0 and "auth" in err
    code, out, _ = cli(daemon, "secrets", "list", "ic-cli", "--json")
    assert json.loads(out) == {"sandbox_id": "ic-cli", "names": ["API_KEY"]}
    code, out, _ = cli(daemon, "intercept-ca")
    assert code == 0 and out.startswith("-----BEGIN CERTIFICATE-----")
    outputs = [cli(daemon, "show", "ic-cli"), cli(daemon, "show", "ic-cli", "--json"), cli(daemon, "ls", "--json")]
    assert all(SECRET not in o + e for _, o, e in outputs)
    assert SECRET not in "".join(daemon.log)
    assert SECRET not in json.dumps(daemon.metrics(bed.host))
    assert cli(daemon, "release", "ic-cli")[0] == 0
    code, out, _ = cli(daemon, "secrets", "list", "ic-cli", "--json")
    assert json.loads(out)["names"] == []     # released: its secrets went with it


def test_allocate_with_rules_checks_them_before_allocating(daemon):
    rules = [{"id": "auth", "domain": "api.test",
              "transforms": [{"op": "set", "header": "Authorization", "value": "${secret:TOKEN}"}]}]
    with daemon.client() as c:
        with pytest.raises(grpc.RpcError) as exc:
            c.allocate("ic-alloc", request_rules=rules)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "TOKEN" in exc.value.details()
        assert [s.sandbox_id for s in c.list()] == []          # nothing was allocated
        assert c.set_secret("ic-alloc", "TOKEN", SECRET) == ["TOKEN"]
        c.allocate("ic-alloc", request_rules=rules)
        got = c.get_request_rules("ic-alloc")
        assert [r.id for r in got.rules] == ["auth"] and got.rules[0].transforms[0].value == "${secret:TOKEN}"
        assert c.list_secrets("ic-alloc") == ["TOKEN"]

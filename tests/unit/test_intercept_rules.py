"""Request rules and secrets: validation, the Lua encoding, secrets at rest."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from netagent.errors import InvalidArgument
from netagent.intercept.rules import RuleSet, check_secret, domain_matches, encode_for_lua, lua_glob, require_secrets
from netagent.intercept.secrets import SecretStore

AUTH = {"op": "set", "header": "Authorization", "value": "Bearer ${secret:API_KEY}"}


def test_rule_defaults_and_normalisation():
    (rule,) = RuleSet.parse([{"id": "a", "domain": "API.Test.", "methods": ["post"], "transforms": [AUTH]}]).rules
    assert rule.domain == "api.test" and rule.methods == ("POST",) and rule.ports == (80, 443)
    assert rule.path == "/" and rule.secrets == {"API_KEY"}


@pytest.mark.parametrize("bad", [
    {"id": "a", "domain": "10.0.0.1"},
    {"id": "a", "domain": "api.test", "path": "v1"},
    {"id": "a", "domain": "api.test", "action": "deny", "transforms": [AUTH]},
    {"id": "a", "domain": "api.test", "transforms": [{"op": "set", "header": "Host", "value": "x"}]},
    {"id": "a", "domain": "api.test", "transforms": [{"op": "set", "header": "Transfer-Encoding", "value": "x"}]},
    {"id": "a", "domain": "api.test", "transforms": [{"op": "set", "header": "X-A", "value": "a\r\nX-B: b"}]},
    {"id": "a", "domain": "api.test", "transforms": [{"op": "set", "header": "X A", "value": "a"}]},
    {"id": "a", "domain": "api.test", "transforms": [{"op": "set", "header": "X-A", "value": "${secret:a-b}"}]},
    {"id": "a", "domain": "api.test", "ports": [0]},
])
def test_bad_rules_are_refused(bad):
    with pytest.raises(InvalidArgument):
        RuleSet.parse([bad])


def test_duplicate_rule_ids_are_refused():
    with pytest.raises(InvalidArgument, match="unique"):
        RuleSet.parse([{"id": "a", "domain": "a.test"}, {"id": "a", "domain": "b.test"}])


def test_a_rule_naming_a_missing_secret_is_refused_clearly():
    rules = RuleSet.parse([{"id": "a", "domain": "api.test", "transforms": [AUTH]}])
    with pytest.raises(InvalidArgument, match="API_KEY"):
        require_secrets(rules, {"OTHER"})
    require_secrets(rules, {"API_KEY"})


@pytest.mark.parametrize("name,value", [("A\r\nB", "v"), ("A", "v\r\nX-Evil: 1"), ("A", "v\n"), ("A", "v\x00"),
                                        ("1A", "v"), ("A", "")])
def test_secret_names_and_values_with_cr_lf_are_refused(name, value):
    with pytest.raises(InvalidArgument) as exc:
        check_secret(name, value)
    assert value not in str(exc.value) or not value   # the message never echoes the value


def test_wildcards_match_one_label_as_tls_does():
    assert domain_matches("a.example.test", "*.example.test")
    assert not domain_matches("example.test", "*.example.test")
    assert not domain_matches("a.b.example.test", "*.example.test")


def test_globs_become_anchored_lua_patterns():
    assert lua_glob("/v1/*/items") == "^/v1/[^/]*/items$"
    assert lua_glob("/v1/**") == "^/v1/.*$"
    assert lua_glob("/a.b-c") == "^/a%.b%-c$"


def test_only_the_secrets_a_rule_uses_are_encoded():
    rules = RuleSet.parse([{"id": "a", "domain": "api.test", "transforms": [AUTH]}])
    text = encode_for_lua("sbx", rules, {"API_KEY": "k1", "UNUSED": "k2"})
    assert "K\tAPI_KEY\tk1" in text and "k2" not in text


def test_secrets_at_rest_are_sealed_and_survive_a_kill(tmp_path):
    key = tmp_path / "keys" / "host.key"
    store = SecretStore(tmp_path / "secrets.json", key)
    store.set("sbx-1", "API_KEY", "sk-live-abcdef123456")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "secrets.json").st_mode) == 0o600
    assert b"sk-live-abcdef123456" not in (tmp_path / "secrets.json").read_bytes()
    # a process that sets a secret and is killed -9 right after: the value is there on the next start
    code = ("from netagent.intercept.secrets import SecretStore; import os, sys, pathlib; "
            f"s = SecretStore(pathlib.Path('{tmp_path}/secrets.json'), pathlib.Path('{key}')); "
            "s.set('sbx-2', 'TOKEN', 'tok-xyz'); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], check=False)
    again = SecretStore(tmp_path / "secrets.json", key)
    assert again.values("sbx-1") == {"API_KEY": "sk-live-abcdef123456"}
    assert again.values("sbx-2") == {"TOKEN": "tok-xyz"}
    assert again.names("sbx-1") == ["API_KEY"]
    assert again.delete("sbx-1", "API_KEY") and not again.delete("sbx-1", "API_KEY")
    assert again.sandboxes() == ["sbx-2"]


def test_a_sealed_value_moved_to_another_sandbox_does_not_open(tmp_path):
    store = SecretStore(tmp_path / "secrets.json", tmp_path / "host.key")
    store.set("sbx-1", "K", "value-1")
    sealed = json.loads((tmp_path / "secrets.json").read_text())
    sealed["sbx-2"] = {"K": sealed["sbx-1"]["K"]}
    (tmp_path / "secrets.json").write_text(json.dumps(sealed))
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        SecretStore(tmp_path / "secrets.json", tmp_path / "host.key").values("sbx-2")


def test_the_store_without_its_key_reveals_nothing(tmp_path):
    store = SecretStore(tmp_path / "secrets.json", tmp_path / "host.key")
    store.set("sbx-1", "K", "value-1")
    other = SecretStore(tmp_path / "secrets.json", tmp_path / "another.key")
    with pytest.raises(Exception):  # noqa: B017
        other.values("sbx-1")


def test_steering_follows_the_connection_policy():
    import ipaddress

    from netagent.intercept.steering import policy_permits, steer_keys
    from netagent.models import EgressPolicy
    from netagent.policy import compile_policy
    deny = [ipaddress.IPv4Network("169.254.0.0/16")]
    open_ = compile_policy(EgressPolicy(internet=True, deny_out=("203.0.113.13/32",)))
    assert policy_permits(open_, False, "203.0.113.10", 443, deny)
    assert not policy_permits(open_, False, "203.0.113.13", 443, deny)          # the sandbox's deny
    assert not policy_permits(open_, True, "169.254.169.254", 443, deny)        # always-deny first
    closed = compile_policy(EgressPolicy(internet=False, allow_out=("api.test", "198.51.100.0/24:443")))
    assert not policy_permits(closed, False, "203.0.113.10", 443, deny)
    assert policy_permits(closed, True, "203.0.113.10", 443, deny)             # admitted by the allowlist
    assert policy_permits(closed, False, "198.51.100.7", 443, deny)
    assert not policy_permits(closed, False, "198.51.100.7", 80, deny)
    keys = steer_keys("10.0.0.2", [("203.0.113.10", 30), ("203.0.113.13", 30)], (443,),
                      lambda a, p: policy_permits(open_, False, a, p, deny))
    assert keys == [(("10.0.0.2", "203.0.113.10", 443), 30)]


def test_steered_hands_back_addresses_no_rule_needs():
    from netagent.intercept.steering import Steered
    now = [100.0]
    s = Steered(clock=lambda: now[0])
    s.note("api.test", [(("10.0.0.2", "203.0.113.10", 443), 30)])
    s.note("cdn.test", [(("10.0.0.2", "203.0.113.10", 443), 30), (("10.0.0.2", "203.0.113.11", 443), 30)])
    s.note("api.test", [(("10.0.0.3", "203.0.113.10", 443), 30)])
    # cdn.test's rules go: .11 was steered for it alone; .10 is still needed for api.test
    assert s.unsteer("10.0.0.2", lambda n, p: n == "api.test") == [("10.0.0.2", "203.0.113.11", 443)]
    now[0] += 31   # api.test's answer expired: nothing of it is left to keep
    assert s.unsteer("10.0.0.2", lambda n, p: True) == [("10.0.0.2", "203.0.113.10", 443)]
    assert s.unsteer("10.0.0.3", lambda n, p: False) == [("10.0.0.3", "203.0.113.10", 443)]

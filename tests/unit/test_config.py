"""Config sections, the flat keys of older configs, immutability, and the
SIGHUP reload that builds a new config and swaps it."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from netagent import config as config_mod
from netagent import daemon
from netagent.config import LEGACY_KEYS, Config
from netagent.errors import ConfigError


def test_sections_and_the_old_flat_keys_mean_the_same(tmp_path):
    new = tmp_path / "new.toml"
    new.write_text('[pool]\nsize = 7\n[probe]\ninterval_s = 0.9\n[registry]\nurl = ""\n[api]\nsocket = "/x.sock"\n')
    old = tmp_path / "old.toml"
    old.write_text('pool_size = 7\nprobe_interval_s = 0.9\nregistry_url = ""\napi_socket = "/x.sock"\n')
    a, b = config_mod.load(new, environ={}), config_mod.load(old, environ={})
    assert a == b and (a.pool.size, a.probe.interval_s, a.registry.url, str(a.api.socket)) == (7, 0.9, "", "/x.sock")
    assert (a.pool_size, a.probe_interval_s) == (7, 0.9)        # read-only aliases for old callers
    for key, (section, name) in LEGACY_KEYS.items():
        assert getattr(Config(), key) == getattr(getattr(Config(), section), name), key


def test_environment_overrides_both_spellings_and_a_flat_key_wins(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[pool]\nsize = 3\nbuild_concurrency = 3\n")
    c = config_mod.load(f, environ={"NETAGENT_POOL__SIZE": "5", "NETAGENT_DNS__TTL_CAP_S": "60"})
    assert (c.pool.size, c.pool.build_concurrency, c.dns.ttl_cap_s) == (5, 3, 60)
    c = config_mod.load(f, environ={"NETAGENT_POOL_SIZE": "9"})
    assert (c.pool.size, c.pool.build_concurrency) == (9, 3)


def test_errors_name_the_section_key_and_the_old_flat_key(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("pool_size = -1\n")
    with pytest.raises(ConfigError, match=r"pool\.size \(pool_size\)"):
        config_mod.load(f, environ={})
    f.write_text("[registry]\nttl_s = 4\nheartbeat_s = 3\n")
    with pytest.raises(ConfigError, match="heartbeat_s must be at most half"):
        config_mod.load(f, environ={})


def test_config_is_immutable_and_replace_validates():
    c = Config()
    with pytest.raises(ValidationError):
        c.pool_size = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        c.pool.size = 3  # type: ignore[misc]
    assert c.replace(pool_size=3, log_level="debug").pool.size == 3 and c.pool.size == 16
    with pytest.raises(ValidationError):
        c.replace(pool_size=-1)


class FakeAgent:
    def __init__(self, config: Config):
        self.config = config
        self.swapped: list[Config] = []

    def reconfigure(self, config: Config) -> None:
        self.swapped.append(config)
        self.config = config


def test_sighup_swaps_a_new_config_with_only_the_live_keys(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(f'state_dir = "{tmp_path}"\n[pool]\nsize = 2\n')
    agent = FakeAgent(config_mod.load(f, environ={}))
    before = agent.config
    f.write_text(f'state_dir = "{tmp_path}"\ndefault_internet = false\nconn_limit = 9\n[pool]\nsize = 5\n')
    daemon.reload(agent, str(f))  # type: ignore[arg-type]
    assert len(agent.swapped) == 1 and agent.config is not before
    assert (agent.config.pool.size, agent.config.default_internet) == (5, False)
    assert agent.config.conn_limit == before.conn_limit == 4096       # restart-only: not applied
    assert before.pool.size == 2                                      # the old one never changed
    f.write_text("pool_size = -3\n")
    daemon.reload(agent, str(f))  # type: ignore[arg-type]
    assert len(agent.swapped) == 1                                    # a bad file changes nothing

"""Shared fixtures. Datapath tests need root, nftables and iproute2: if they are
missing the tests fail (they never skip)."""
from __future__ import annotations

import os
import shutil

import pytest

from netagent.agent import Agent
from netagent.config import Config
from tests.testbed.bed import Testbed
from tests.testbed.redis_proc import RedisServer


def require_datapath_prereqs() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not installed")
    if not os.path.exists("/dev/net/tun"):
        problems.append("/dev/net/tun missing")
    try:
        import nftables  # noqa: F401
    except ImportError:
        problems.append("python3-nftables not importable")
    if problems:
        pytest.fail("datapath tests cannot run: " + ", ".join(problems), pytrace=False)


@pytest.fixture
def bed():
    require_datapath_prereqs()
    testbed = Testbed().create()
    try:
        yield testbed
    finally:
        testbed.destroy()


def agent_config(bed: Testbed, state_dir, **over) -> Config:
    over.setdefault("dns_upstreams", ["192.0.2.53"])
    over.setdefault("dns_ttl_floor_s", 1)
    return Config(prefix=bed.agent_prefix, host_netns=bed.host, uplink="up0", state_dir=state_dir,
                  pool_size=(size := over.pop("pool_size", 2)),
                  pool_max_size=over.pop("pool_max_size", size),  # a fixed pool unless a test asks for growth
                  ruleset_check_interval_s=0.5, **over)


@pytest.fixture
async def agent(bed, tmp_path):
    a = Agent(agent_config(bed, tmp_path / "state"))
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a unix socket in tmp_path, killed even if the test fails."""
    server = RedisServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def set_dump_slow_reads(monkeypatch):
    """How often firewall/set_dump.py left its fast path: messages it walked
    element by element, and elements it read with the generic attribute walker."""
    from netagent.firewall import element_probe, nfnetlink, set_dump
    counts = {"messages walked": 0, "generic walker": 0}

    def walk(buf: bytes):  # type: ignore[no-untyped-def]
        counts["messages walked"] += 1
        return nfnetlink.attrs(buf)

    def generic(elem: bytes):  # type: ignore[no-untyped-def]
        counts["generic walker"] += 1
        return element_probe.counter_of(elem)
    monkeypatch.setattr(set_dump, "attrs", walk)
    monkeypatch.setattr(set_dump, "counter_of", generic)
    return counts

"""Smoke test: each baseline sets up / tears down 3 slots in a private host netns."""
import os
import re
import secrets
import subprocess

import pytest

from .baselines import BASELINES, link_names, netns_names, nsx, run


@pytest.fixture(autouse=True)
def prerequisites():
    """Missing prerequisites fail the test; they never skip it."""
    if os.geteuid() != 0 or not os.path.exists("/usr/lib/cni/bridge"):
        pytest.fail("baselines need root and containernetworking-plugins (make test installs them)",
                    pytrace=False)


@pytest.fixture
def host_ns():
    name = f"blt{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ours(names, prefix):
    return [n for n in names if n.startswith(prefix + "-")]


@pytest.mark.parametrize("kind", sorted(BASELINES))
def test_baseline_smoke(kind, host_ns):
    prefix = f"t{kind[0]}{secrets.token_hex(2)}"
    root_links = set(link_names())
    b = BASELINES[kind](host_ns, prefix)
    try:
        b.prepare()
        for i in range(3):
            b.setup_one(i)
        nat = run(nsx(host_ns, "iptables-save", "-t", "nat"))
        assert len(run(["ip", "-n", host_ns, "-o", "link", "show", "type", "veth"]).splitlines()) == 3
        for i in range(3):
            ns = f"{prefix}-{i}"
            assert ns in netns_names()
            links = run(["ip", "-n", ns, "-o", "-d", "link", "show"])
            assert re.search(r"^\d+: tap0:.*tun type tap", links, re.M)
            assert run(["ip", "-n", ns, "-o", "link", "show", "type", "veth"]).strip()
            assert re.search(rf"--dport {30000 + i} .*-j DNAT --to-destination [\d.]+:8080", nat)
        for i in range(3):
            b.teardown_one(i)
        assert not ours(netns_names(), prefix)
        assert not run(["ip", "-n", host_ns, "-o", "link", "show", "type", "veth"]).strip()
        assert "-j DNAT" not in run(nsx(host_ns, "iptables-save", "-t", "nat"))
    finally:
        b.cleanup()
    assert not ours(netns_names(), prefix)
    assert not ours(link_names(host_ns), prefix)
    assert not re.search(r"^(-A|:CNI-)", run(nsx(host_ns, "iptables-save")), re.M)
    assert getattr(b, "datadir", None) is None
    assert set(link_names()) == root_links

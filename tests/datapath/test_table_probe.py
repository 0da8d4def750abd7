"""`netagent status`'s table check against a real kernel, in a netns this test
makes (and removes)."""
from __future__ import annotations

import os

from netagent.firewall.table_probe import table_exists
from netagent.operator.kernel import in_netns
from tests.conftest import require_datapath_prereqs
from tests.testbed import sh


def test_table_exists_sees_only_the_named_inet_table_of_its_netns():
    require_datapath_prereqs()
    ns = f"tprobe{os.getpid():x}"
    sh.ip("netns", "add", ns)
    try:
        path = f"/run/netns/{ns}"
        assert in_netns(path, lambda: table_exists("inet", "na")) is False
        sh.run("nft", "add", "table", "ip", "na", ns=ns)             # same name, another family
        assert in_netns(path, lambda: table_exists("inet", "na")) is False
        sh.run("nft", "add", "table", "inet", "na", ns=ns)
        sh.run("nft", "add", "set", "inet", "na", "s", "{ type ipv4_addr; }", ns=ns)
        sh.run("nft", "add", "element", "inet", "na", "s", "{ 10.0.0.1, 10.0.0.2 }", ns=ns)
        assert in_netns(path, lambda: table_exists("inet", "na")) is True
        assert in_netns(path, lambda: table_exists("inet", "nb")) is False
    finally:
        sh.ip("netns", "del", ns, check=False)

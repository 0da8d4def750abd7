"""Usage accounting (issue #14): known UDP traffic through each path is billed
exactly (IP bytes: payload + 8 UDP + 20 IPv4), across a kill -9 of the agent,
a restart that reloads the table and `nft flush ruleset`, and the final count arrives as USAGE_FINAL."""
from __future__ import annotations

import json

from netagent.state import StateStore
from tests.conftest import agent_config
from tests.datapath.test_restart import AgentProcess
from tests.testbed import sh
from tests.testbed.bed import UPLINK_IP, WEB_IP, LightGuest, wait_until

UDP_ECHO_PORT = 9999      # in the internet netns (egress)
GUEST_PORT = 5000         # in the guest, exposed over UDP (ingress)
IP_UDP_HEADERS = 28
KEYS = [f"{path}_{d}" for path in ("egress", "ingress", "host") for d in ("sent", "received")]


def traffic(ns: str, *args: str) -> dict[str, list[int]]:
    return json.loads(sh.run(sh.PYTHON, "-m", "tests.testbed.udp_traffic", *args, ns=ns).stdout)


def billed(lengths: list[int]) -> dict[str, int]:
    return {"packets": len(lengths), "bytes": sum(n + IP_UDP_HEADERS for n in lengths)}


def one_round(bed, guest: LightGuest, host_port: int, size: int, dns_too: bool = True) -> dict[str, dict[str, int]]:
    """Egress, ingress and (while an agent runs its resolver) DNS traffic of
    known sizes; what each key must grow by."""
    out = traffic(guest.name, "send", WEB_IP, str(UDP_ECHO_PORT), "7", str(size))
    # ingress: the internet client sends, so the sandbox receives first
    inn = traffic(bed.inet, "send", UPLINK_IP, str(host_port), "5", str(size + 100))
    dns = traffic(guest.name, "dns", guest.gateway, "3", "public.test") if dns_too else {"sent": [], "received": []}
    return {"egress_sent": billed(out["sent"]), "egress_received": billed(out["received"]),
            "ingress_sent": billed(inn["received"]), "ingress_received": billed(inn["sent"]),
            "host_sent": billed(dns["sent"]), "host_received": billed(dns["received"])}


def plus(a: dict, b: dict) -> dict:
    return {k: {f: a[k][f] + b[k][f] for f in ("packets", "bytes")} for k in KEYS}


def test_known_bytes_on_each_path_are_billed_exactly_across_kill9_and_flush(bed, tmp_path):
    bed.start_module(bed.inet, "tests.testbed.udp_traffic", "echo", str(UDP_ECHO_PORT), WEB_IP)
    cfg = agent_config(bed, tmp_path / "state", pool_size=1).model_dump_json()
    agent = AgentProcess(cfg)
    procs = [agent]
    guest = None
    try:
        net = agent.call("allocate", sandbox_id="bill-1")
        guest = LightGuest.attach(bed, type("N", (), net)(), "a")
        bed.start_module(guest.name, "tests.testbed.udp_traffic", "echo", str(GUEST_PORT))
        host_port = agent.call("expose", sandbox_id="bill-1", guest_port=GUEST_PORT, protocol="udp")
        zero = {k: {"packets": 0, "bytes": 0} for k in KEYS}
        assert agent.call("usage", sandbox_id="bill-1") == {"bill-1": zero}

        want = one_round(bed, guest, host_port, 300)
        assert agent.call("usage", sandbox_id="bill-1") == {"bill-1": want}

        # kill -9: the kernel keeps counting while the agent is gone; nothing is lost
        agent.kill9()
        want = plus(want, one_round(bed, guest, host_port, 500, dns_too=False))   # no resolver without it
        agent = AgentProcess(cfg)
        procs.append(agent)
        assert agent.call("usage", sandbox_id="bill-1") == {"bill-1": want}

        # an upgrade whose rules differ: the start reloads the table, whose new
        # elements count from 0; what was counted while no agent ran is read first
        agent.kill9()
        store = StateStore(tmp_path / "state")
        store.set_meta("ruleset_fingerprint", "from-an-older-version")
        store.close()
        want = plus(want, one_round(bed, guest, host_port, 600, dns_too=False))
        agent = AgentProcess(cfg)
        procs.append(agent)
        assert agent.call("usage", sandbox_id="bill-1") == {"bill-1": want}

        # the table flushed under a running agent: counts up to its last reading
        # (every usage_interval_s; here the reading GetUsage just made) are kept
        sh.run("nft", "flush", "ruleset", ns=bed.host)
        assert wait_until(lambda: sh.run("nft", "list", "set", "inet", bed.agent_prefix, "usage_egress_sent",
                                         ns=bed.host, check=False).returncode == 0, timeout=10)
        want = plus(want, one_round(bed, guest, host_port, 700))
        assert agent.call("usage", sandbox_id="bill-1") == {"bill-1": want}

        # kill -9, then the flush while no agent runs: the restart folds what it persisted
        agent.kill9()
        sh.run("nft", "flush", "ruleset", ns=bed.host)
        agent = AgentProcess(cfg)
        procs.append(agent)
        assert agent.call("usage", sandbox_id="bill-1") == {"bill-1": want}
        want = plus(want, one_round(bed, guest, host_port, 900))
        assert agent.call("usage", sandbox_id="bill-1") == {"bill-1": want}

        # release: the final count is a USAGE_FINAL event, the counters are gone
        assert agent.call("release", sandbox_id="bill-1") is True
        assert wait_until(lambda: agent.call("events", type="usage_final"), timeout=10)
        assert agent.call("events", type="usage_final") == [{"sandbox_id": "bill-1", "data": {"usage": want}}]
        for key in KEYS:
            listed = sh.run("nft", "-j", "list", "set", "inet", bed.agent_prefix, f"usage_{key}", ns=bed.host).stdout
            assert net["sandbox_ip"] not in listed, key
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.kill9()
        if guest is not None:
            guest.stop()

"""kill -9 and restart: the datapath survives, flows keep working, state matches the kernel."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import time

from tests.conftest import agent_config
from tests.datapath.helpers import elements
from tests.testbed import sh
from tests.testbed.bed import HTTP_PORT, UPLINK_IP, WEB_IP, LightGuest
from tests.testbed.flows import STREAM_READER


class AgentProcess:
    """The agent in its own process, so it can be killed for real."""

    def __init__(self, config_json: str):
        self.proc = subprocess.Popen([sh.PYTHON, "-m", "tests.testbed.agent_proc", config_json], cwd=sh.REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line, "agent process died during start"
        self.reconcile = json.loads(line)["ready"]

    def call(self, op: str, **args):
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        assert "ok" in reply, reply
        return reply["ok"]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def assert_state_matches_kernel(bed, proc: AgentProcess, settle_s: float = 10.0) -> None:
    """Surplus slots are torn down in the background after a release: allow them
    to settle, then compare strictly."""
    deadline = time.monotonic() + settle_s
    while True:
        try:
            return _compare_state_and_kernel(bed, proc)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _compare_state_and_kernel(bed, proc: AgentProcess) -> None:
    nets = proc.call("list")
    t = bed.agent_prefix
    egress = {e[0] for e in elements(bed.host, t, "egress_mode")}
    assert egress == {n["sandbox_ip"] for n in nets}
    dnat = {(e[0]["concat"][0], e[0]["concat"][1]) for e in elements(bed.host, t, "port_dnat")}
    assert dnat == {(p["protocol"], p["host_port"]) for n in nets for p in n["ports"]}
    netns = {n for n in sh.netns_list() if n.startswith(f"{t}-")}
    veths = {f"{t}v{n.split('-')[1]}" for n in netns}
    assert {n["netns"] for n in nets} <= netns
    assert veths == {v for v in sh.links(bed.host) if v.startswith(f"{t}v")}
    assert len(elements(bed.host, t, "sbx_ifaces")) == len(netns)


def test_kill9_and_restart_keeps_established_flow_and_state(bed, tmp_path):
    cfg = agent_config(bed, tmp_path / "state", pool_size=2).model_dump_json()
    first = AgentProcess(cfg)
    net = first.call("allocate", sandbox_id="live-1")
    guest = LightGuest.attach(bed, type("N", (), net)(), "a")
    bed.start_server(guest.name, "--http", "8080")
    port = first.call("expose", sandbox_id="live-1", guest_port=8080)
    # A long download through the masquerade: one chunk every 50 ms for 6 s.
    stream = sh.popen(sh.PYTHON, "-c", STREAM_READER, f"http://{WEB_IP}:{HTTP_PORT}/stream?seconds=6", ns=guest.name)
    time.sleep(1.0)
    first.kill9()
    second = AgentProcess(cfg)
    assert second.reconcile["adopted"] >= 1 and second.reconcile["rebuilt"] == 0
    out, err = stream.communicate(timeout=30)
    assert stream.returncode == 0, err
    gaps = json.loads(out)
    assert gaps["chunks"] >= 100 and gaps["max_gap_s"] < 1.0, gaps
    assert second.call("get", sandbox_id="live-1")["sandbox_ip"] == net["sandbox_ip"]
    ok, body = bed.fetch(bed.inet, f"http://{UPLINK_IP}:{port}/")
    assert ok, body
    assert_state_matches_kernel(bed, second)
    second.kill9()


def test_kill9_at_random_points_of_churn_always_reconciles(bed, tmp_path):
    cfg = agent_config(bed, tmp_path / "state", pool_size=3).model_dump_json()
    rng = random.Random(7)
    for _round in range(4):
        proc = AgentProcess(cfg)
        assert_state_matches_kernel(bed, proc)
        # Fire a burst of operations without reading the replies, then kill mid-way.
        for _ in range(30):
            sid = f"churn-{rng.randrange(12)}"
            op = rng.choice(["allocate", "release", "expose"])
            args = {"sandbox_id": sid} if op != "expose" else {"sandbox_id": sid, "guest_port": rng.randrange(1, 50)}
            proc.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        proc.proc.stdin.flush()
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill9()
    final = AgentProcess(cfg)
    assert_state_matches_kernel(bed, final)
    for n in final.call("list"):
        final.call("release", sandbox_id=n["sandbox_id"])
    assert_state_matches_kernel(bed, final)
    final.kill9()



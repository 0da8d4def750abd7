"""kill -9 and restart: the datapath survives, flows keep working, state matches the kernel."""
from __future__ import annotations

import json
import random
import time

from tests.conftest import agent_config
from tests.datapath.helpers import egress_ips, elements
from tests.testbed import sh
from tests.testbed.agent_proc import AgentProcess
from tests.testbed.bed import HTTP_PORT, UPLINK_IP, WEB_IP, LightGuest, eventually, wait_until
from tests.testbed.flows import STREAM_READER


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
    """The kernel holds exactly the agent's whole slot table: every slot's netns
    and veth and nothing else with our prefix, every element of its sandboxes."""
    nets = proc.call("list")
    table = {int(i): state for i, state in proc.call("slot_table").items()}
    t = bed.agent_prefix
    assert set(table.values()) <= {"ready", "allocated"}, f"not settled: {table}"
    assert {i for i, state in table.items() if state == "allocated"} == {n["slot"] for n in nets}
    egress = set(egress_ips(bed.host, t))
    assert egress == {n["sandbox_ip"] for n in nets}
    # Two live ct marks per sandbox (its flows and flows to it), no leftover.
    assert {e[0] for e in elements(bed.host, t, "slot_mark")} == egress
    assert len(elements(bed.host, t, "live_marks")) == 2 * len(nets)
    dnat = {(e[0]["concat"][0], e[0]["concat"][1]) for e in elements(bed.host, t, "port_dnat")}
    assert dnat == {(p["protocol"], p["host_port"]) for n in nets for p in n["ports"]}
    assert {n for n in sh.netns_list() if n.startswith(f"{t}-")} == {f"{t}-{i}" for i in table}
    veths = {f"{t}v{i}" for i in table}
    assert {v for v in sh.links(bed.host) if v.startswith(f"{t}v")} == veths
    assert set(elements(bed.host, t, "sbx_ifaces")) == veths


def settled_slot_table(proc: AgentProcess, pool_size: int) -> dict[str, str]:
    """The slot table once no slot is building and the pool is full."""
    deadline = time.monotonic() + 10
    while True:
        table = proc.call("slot_table")
        if set(table.values()) <= {"ready", "allocated"} and list(table.values()).count("ready") == pool_size:
            return table
        assert time.monotonic() < deadline, f"the pool did not settle: {table}"
        time.sleep(0.1)


def test_kill9_and_restart_keeps_established_flow_and_state(bed, tmp_path):
    cfg = agent_config(bed, tmp_path / "state", pool_size=2).model_dump_json()
    first = AgentProcess(cfg)
    net = first.call("allocate", sandbox_id="live-1")
    guest = LightGuest.attach(bed, type("N", (), net)(), "a")
    bed.start_server(guest.name, "--http", "8080")
    port = first.call("expose", sandbox_id="live-1", guest_port=8080)
    # A long download through the masquerade: one chunk every 50 ms for 6 s.
    stream = sh.popen(sh.PYTHON, "-c", STREAM_READER, f"http://{WEB_IP}:{HTTP_PORT}/stream?seconds=6", ns=guest.name)
    # The download is established before the kill (not hoped for after a sleep).
    assert wait_until(lambda: sh.run("ss", "-Htn", "state", "established", "dst", f"{WEB_IP}:{HTTP_PORT}",
                                     ns=guest.name).stdout.strip(), timeout=10), "the download never connected"
    before = settled_slot_table(first, pool_size=2)
    first.kill9()
    second = AgentProcess(cfg)
    # Every slot (the allocated one and the two warm ones) adopted as it was.
    assert {k: second.reconcile[k] for k in ("adopted", "rebuilt", "removed", "orphans")} == \
        {"adopted": len(before), "rebuilt": 0, "removed": 0, "orphans": 0}, second.reconcile
    assert second.call("slot_table") == before
    out, err = stream.communicate(timeout=30)
    assert stream.returncode == 0, err
    gaps = json.loads(out)
    assert gaps["chunks"] >= 100 and gaps["max_gap_s"] < 1.0, gaps
    assert second.call("get", sandbox_id="live-1")["sandbox_ip"] == net["sandbox_ip"]
    ok, body = bed.fetch(bed.inet, f"http://{UPLINK_IP}:{port}/")
    assert ok, body
    assert_state_matches_kernel(bed, second)
    second.kill9()


def _random_op(rng: random.Random, sid: str) -> tuple[str, dict]:
    op = rng.choice(["allocate", "allocate", "release", "expose"])
    args = {"sandbox_id": sid} if op != "expose" else {"sandbox_id": sid, "guest_port": rng.randrange(1, 50)}
    return op, args


def _acknowledge(expected: dict[str, dict], op: str, args: dict, reply: dict) -> None:
    """Apply an answered operation to the model of what must survive."""
    sid = args["sandbox_id"]
    if op == "allocate":
        assert "ok" in reply, reply
        assert expected.get(sid, {}).get("ip", reply["ok"]["sandbox_ip"]) == reply["ok"]["sandbox_ip"]
        expected.setdefault(sid, {"ip": reply["ok"]["sandbox_ip"], "ports": {}})
    elif op == "release":
        assert reply == {"ok": sid in expected}, (reply, sid)
        expected.pop(sid, None)
    elif sid in expected:  # expose
        assert "ok" in reply, reply
        expected[sid]["ports"][args["guest_port"]] = reply["ok"]  # the host port
    else:
        assert reply.get("error") == "NOT_FOUND", reply


def sandboxes(proc: AgentProcess) -> dict[str, dict]:
    return {n["sandbox_id"]: {"ip": n["sandbox_ip"], "ports": {p["guest_port"]: p["host_port"] for p in n["ports"]}}
            for n in proc.call("list")}


def test_kill9_at_random_points_of_churn_always_reconciles(bed, tmp_path):
    """Each round: operations on the churn-a* sandboxes are answered (so they
    must survive), then a batch on churn-b* is sent at once and the agent is
    killed right after a random number of its replies, with the rest in flight
    (whatever of it committed is read back on the next start)."""
    cfg = agent_config(bed, tmp_path / "state", pool_size=3).model_dump_json()
    rng = random.Random(7)
    expected: dict[str, dict] = {}
    in_flight: set[str] = set()
    interrupted = 0
    for _round in range(4):
        proc = AgentProcess(cfg)
        actual = sandboxes(proc)
        for sid in in_flight:  # unknown until now: take whatever committed
            expected.pop(sid, None)
            if sid in actual:
                expected[sid] = actual[sid]
        in_flight.clear()
        assert actual == expected, "acknowledged operations were lost or changed by the kill"
        assert_state_matches_kernel(bed, proc)
        for _ in range(8):
            op, args = _random_op(rng, f"churn-a{rng.randrange(5)}")
            _acknowledge(expected, op, args, proc.request(op, **args))
        batch = [_random_op(rng, f"churn-b{rng.randrange(5)}") for _ in range(15)]
        for op, args in batch:
            proc.send(op, **args)
        in_flight |= {args["sandbox_id"] for _, args in batch}
        answered = rng.randrange(len(batch) - 1)  # kill right after this many replies: the next is in flight
        for _ in range(answered):
            assert proc.proc.stdout.readline(), "agent process died during the batch"
        interrupted += answered + len(proc.kill9()) < len(batch)
    assert interrupted >= 2, "the kills did not land while operations were in flight"
    final = AgentProcess(cfg)
    actual = sandboxes(final)
    assert {s: v for s, v in actual.items() if s not in in_flight} == \
        {s: v for s, v in expected.items() if s not in in_flight}
    assert_state_matches_kernel(bed, final)
    final.kill9()
    # A kill with nothing in flight changes nothing at all.
    again = AgentProcess(cfg)
    assert sandboxes(again) == actual
    for sid in actual:
        assert again.call("release", sandbox_id=sid) is True
    assert_state_matches_kernel(bed, again)
    again.kill9()


async def test_reconcile_rebuilds_a_vanished_allocated_slot_and_removes_leftovers(bed, tmp_path):
    from netagent.agent import Agent
    state = tmp_path / "state"
    first = Agent(agent_config(bed, state, pool_size=1))
    await first.start()
    net = await first.allocate("rb-1")
    port = await first.expose("rb-1", 8080)
    await first.stop()
    t = bed.agent_prefix
    # The sandbox's kernel objects vanish (a netns deleted by hand, a host reboot) ...
    sh.ip("netns", "del", net.netns)
    # The veth goes with its peer once the kernel has cleaned the netns up (a workqueue).
    assert await eventually(lambda: net.host_veth not in sh.links(bed.host), timeout=5)
    # ... and objects with our prefix that no state names are left behind.
    sh.ip("netns", "add", f"{t}-77")
    sh.ip("link", "add", f"{t}v77", "type", "veth", "peer", "name", "veth0", "netns", f"{t}-77", ns=bed.host)
    sh.run("nft", "add", "element", "inet", t, "sbx_ifaces", f"{{ {t}v77 }}", ns=bed.host)

    second = Agent(agent_config(bed, state, pool_size=1))
    await second.start()
    try:
        report = second.stats["last_reconcile"]
        assert report["rebuilt"] == 1 and report["orphans"] == 1, report
        again = await second.get("rb-1")
        assert (again.slot, again.sandbox_ip, again.netns) == (net.slot, net.sandbox_ip, net.netns)
        assert net.netns in sh.netns_list() and net.host_veth in sh.links(bed.host), "not rebuilt"
        assert f"{t}-77" not in sh.netns_list()
        assert f"{t}v77" not in sh.links(bed.host)
        assert f"{t}v77" not in elements(bed.host, t, "sbx_ifaces")
        # The rebuilt slot carries traffic both ways, with the same addresses.
        guest = LightGuest.attach(bed, again, "a")
        ok, body = guest.fetch(f"http://{WEB_IP}:{HTTP_PORT}/")
        assert ok, body
        assert json.loads(body)["client"] == UPLINK_IP
        bed.start_server(guest.name, "--http", "8080")
        ok, body = bed.fetch(bed.inet, f"http://{UPLINK_IP}:{port}/")
        assert ok, body
        assert json.loads(body)["server"] == net.guest_ip
    finally:
        await second.stop()

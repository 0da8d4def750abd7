"""Walk-free flow kills (#15): a release or a narrowing policy kills flows in
its own nft transaction (the flow's ct mark leaves live_marks), not by a
conntrack walk. Each test keeps the cleaner thread busy while the kill must
happen, so a walk could not be what killed the flow."""
from __future__ import annotations

import asyncio
import random
import subprocess
import threading
import time

from netagent.addressing import AddressPlan
from netagent.agent import Agent
from netagent.config import Config
from netagent.errors import Unavailable
from tests.conftest import agent_config
from tests.datapath.helpers import conntrack_count, counter_packets, elements
from tests.datapath.test_restart import AgentProcess, assert_state_matches_kernel, settled_slot_table
from tests.testbed import sh
from tests.testbed.bed import ECHO_PORT, UPLINK_IP, WEB_IP, LightGuest, eventually

# A TCP connection that answers "ping <timeout>" on stdin with "ok" if a round
# trip on it worked within the timeout, else "dead". Each answer is read to its
# end (an HTTP reply may come in several segments), so no leftover of one round
# trip can pass for the next.
_HELD = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
payload = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" if len(sys.argv) > 3 else b"x"
print("connected", flush=True)
for line in sys.stdin:
    s.settimeout(float(line.split()[1]))
    ok = False
    try:
        s.sendall(payload)
        ok = bool(s.recv(4096))
        s.settimeout(0.3)
        while ok and s.recv(4096):
            pass
    except socket.timeout:
        pass
    except OSError:
        ok = False
    print("ok" if ok else "dead", flush=True)
"""


class Held:
    """One held-open connection, started in netns `ns`."""

    def __init__(self, ns: str, host: str, port: int, http: bool = False):
        args = ["ip", "netns", "exec", ns, sh.PYTHON, "-c", _HELD, host, str(port)] + (["http"] if http else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "connected", f"could not connect to {host}:{port}: {line!r}"

    def alive(self, timeout: float = 0.8) -> bool:
        self.proc.stdin.write(f"ping {timeout}\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip() == "ok"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def any_mark(slot) -> str:
    """conntrack -m's filter for every flow of the slot."""
    value, mask = slot.any_mark
    return f"{value}/{mask}"


class BusyCleaner:
    """Occupies the agent's cleaner thread (where conntrack walks run) until released."""

    def __init__(self, agent: Agent):
        self.gate = threading.Event()
        self.task = asyncio.ensure_future(agent.cleaner.call(self.gate.wait, 30))

    async def release(self) -> None:
        self.gate.set()
        await self.task


async def sandbox_with_flows(bed, agent: Agent, sid: str, held: list[Held]):
    """An allocated sandbox with a guest, an exposed HTTP port, and two held
    connections: one the guest started (egress), one to its port (ingress)."""
    net = await agent.allocate(sid)
    guest = LightGuest.attach(bed, net, "a")
    bed.start_server(guest.name, "--http", "8080")
    port = await agent.expose(sid, 8080)
    held.append(Held(guest.name, WEB_IP, ECHO_PORT))
    held.append(Held(bed.inet, UPLINK_IP, port, http=True))
    assert all(h.alive() for h in held)
    return net, held[0], held[1]


async def test_released_sandbox_flows_are_dead_when_release_returns_and_its_reused_slot_sees_none(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=2))
    await agent.start(fill_pool=False)  # no refills: the released slot is the only warm one
    held: list[Held] = []
    try:
        net, egress, ingress = await sandbox_with_flows(bed, agent, "kill-a", held)
        slot = agent.plan.slot(net.slot)
        dropped = counter_packets(bed.host, bed.agent_prefix, "drop_dead_flow")

        busy = BusyCleaner(agent)
        assert await agent.release("kill-a") is True
        assert not egress.alive(), "the sandbox's own flow survived release"
        assert not ingress.alive(), "a flow to the released sandbox's exposed port survived release"
        assert counter_packets(bed.host, bed.agent_prefix, "drop_dead_flow") > dropped
        assert conntrack_count(bed.host, "-m", any_mark(slot)) > 0  # killed, not flushed

        await busy.release()
        assert await eventually(lambda: net.slot in agent.ready, timeout=10)  # cleaned, then warm again
        # (The slot netns's own table is not checked here: the old guest, still
        # attached, keeps retransmitting into it. test_kill9_... checks it.)
        assert conntrack_count(bed.host, "-m", any_mark(slot)) == 0
        again = await agent.allocate("kill-b")
        assert again.slot == net.slot
        # The same marks are live again: a leftover entry would let the old
        # client's connection through to the new tenant (the guest still
        # attached plays it). Only the outside end is checked: the old guest
        # itself is not a real next tenant (a new VM has no such socket).
        assert not ingress.alive(timeout=4), "the old exposed-port flow reached the reused slot"
    finally:
        for h in held:
            h.close()
        await agent.stop()


async def test_narrowing_kills_egress_flows_without_a_walk_and_keeps_exposed_port_flows(bed, agent):
    held: list[Held] = []
    try:
        _, egress, ingress = await sandbox_with_flows(bed, agent, "knarrow-1", held)
        busy = BusyCleaner(agent)
        try:
            await agent.update_policy("knarrow-1", {"internet": False})
            assert not egress.alive(), "the egress flow survived narrowing"
            assert ingress.alive(), "the exposed-port flow died with the narrowing"
        finally:
            await busy.release()
        assert ingress.alive()
    finally:
        for h in held:
            h.close()


def test_kill9_during_the_cleanup_of_released_slots_hands_out_no_slot_with_stale_flows(bed, tmp_path):
    """Each round: sandboxes with open flows are released, the agent is killed
    at a random point of the background cleanup, and restarted. Every warm slot
    must then be free of conntrack entries (host and slot), and the kernel must
    hold exactly the state (elements, live marks, netns, links). The guests are
    gone before the release (as a VM is), so nothing recreates entries."""
    cfg = agent_config(bed, tmp_path / "state", pool_size=3)
    plan = AddressPlan(Config.model_validate_json(cfg.model_dump_json()))
    rng = random.Random(15)
    proc = AgentProcess(cfg.model_dump_json())
    try:
        for round_ in range(3):
            nets = [proc.call("allocate", sandbox_id=f"k9-{round_}-{k}") for k in range(2)]
            for k, net in enumerate(nets):
                guest = LightGuest.attach(bed, type("N", (), net)(), f"g{round_}{k}")
                flow = Held(guest.name, WEB_IP, ECHO_PORT)
                assert flow.alive()
                flow.close()
                guest.stop()
            assert conntrack_count(bed.host, "-m", any_mark(plan.slot(nets[0]["slot"]))) > 0
            for net in nets:
                assert proc.call("release", sandbox_id=net["sandbox_id"]) is True
            time.sleep(rng.uniform(0, 0.04))   # somewhere in the cleanup (~13+ ms per slot walk)
            proc.kill9()
            proc = AgentProcess(cfg.model_dump_json())
            table = settled_slot_table(proc, pool_size=3)
            for idx, state in table.items():
                slot = plan.slot(int(idx))
                if state == "ready":
                    assert conntrack_count(bed.host, "-m", any_mark(slot)) == 0, f"warm slot {idx} has stale flows"
                    assert conntrack_count(slot.netns) == 0, f"warm slot {idx}'s netns has stale flows"
            assert_state_matches_kernel(bed, proc)
    finally:
        proc.kill9()


def marks_by_source(bed, sources: set[str]) -> dict[str, set[int]]:
    """The ct marks of the host's conntrack entries, by original source address."""
    out: dict[str, set[int]] = {}
    for line in sh.run("conntrack", "-L", ns=bed.host, check=False).stdout.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        src = line.split("src=")[1].split()[0] if "src=" in line else ""
        if src in sources:
            out.setdefault(src, set()).add(int(fields["mark"]))
    return out


async def test_nft_flush_ruleset_during_churn_is_restored_and_no_sandbox_gets_anothers_flows(bed, tmp_path):
    agent = Agent(agent_config(bed, tmp_path / "state", pool_size=4))
    await agent.start()
    held: list[Held] = []
    churning = True

    async def churn() -> None:
        k = 0
        while churning:
            sid = f"churn-{k}"
            try:  # while the table is gone, calls get Unavailable: retry, as an orchestrator does
                await agent.allocate(sid)
                await agent.release(sid)
                k += 1
            except Unavailable:
                await asyncio.sleep(0.01)

    try:
        nets = []
        for k in range(2):
            net = await agent.allocate(f"keep-{k}")
            guest = LightGuest.attach(bed, net, f"k{k}")
            held.append(Held(guest.name, WEB_IP, ECHO_PORT))
            nets.append(net)
        assert all(h.alive() for h in held)
        task = asyncio.ensure_future(churn())
        await asyncio.sleep(0.3)
        sh.run("nft", "flush", "ruleset", ns=bed.host)
        flushed = time.monotonic()
        bound = 3 * agent.config.ruleset_check_interval_s
        assert await eventually(lambda: agent.stats["ruleset_restores"] >= 1, timeout=bound, interval=0.05), \
            f"not restored within 3 check intervals ({bound} s)"
        took = time.monotonic() - flushed
        await asyncio.sleep(0.3)
        churning = False
        await task
        assert took <= bound
        # Both kept sandboxes' flows carried on, each with its own marks only.
        assert all(h.alive() for h in held), "a flow of a kept sandbox died with the flush"
        by_src = marks_by_source(bed, {n.sandbox_ip for n in nets})
        for net in nets:
            value, mask = agent.plan.slot(net.slot).any_mark
            assert by_src.get(net.sandbox_ip) and all(m & mask == value for m in by_src[net.sandbox_ip]), \
                f"{net.sandbox_id}'s flows carry another slot's mark: {by_src}"
        t = bed.agent_prefix
        assert len(elements(bed.host, t, "live_marks")) == 2 * len(agent.allocations) == 4
        assert {e[0] for e in elements(bed.host, t, "slot_mark")} == {n.sandbox_ip for n in nets}
    finally:
        churning = False
        for h in held:
            h.close()
        await agent.stop()

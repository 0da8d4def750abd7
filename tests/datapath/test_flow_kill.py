"""Walk-free flow kills (#15): a release or a narrowing policy kills flows in
its own nft transaction (the flow's ct mark leaves live_marks), not by a
conntrack walk. Each test keeps the cleaner thread busy while the kill must
happen, so a walk could not be what killed the flow."""
from __future__ import annotations

import asyncio
import subprocess
import threading

from netagent.agent import Agent
from tests.conftest import agent_config
from tests.datapath.helpers import conntrack_count, counter_packets
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
        assert conntrack_count(bed.host, "-m", any_mark(slot)) == 0 and conntrack_count(net.netns) == 0
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

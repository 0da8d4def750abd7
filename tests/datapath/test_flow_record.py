"""Every sandbox connection on record, from the host netns' conntrack destroy
events: real light guests, the test bed's TEST-NET servers, a real agent.

The test bed's host netns ends flows quickly (TIME_WAIT, CLOSE and UDP
timeouts of 1 s) so a record comes seconds after the connection ends, not
minutes; the agent's reaping dump (every 0.5 s here) deletes expired entries at once."""
from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

from netagent.agent import Agent
from netagent.flows import codec
from netagent.flows.records import FlowRecord
from tests.conftest import agent_config
from tests.datapath.test_resolver import dns
from tests.testbed import sh
from tests.testbed.bed import DNS_IP, ECHO_PORT, HTTP_PORT, WEB2_IP, WEB_IP, LightGuest, eventually

QUICK_ENDS = {"nf_conntrack_tcp_timeout_time_wait": "1", "nf_conntrack_tcp_timeout_close": "1",
              "nf_conntrack_udp_timeout": "1", "nf_conntrack_udp_timeout_stream": "1"}
CLOSED_PORT = 9   # nothing listens there in the internet netns: the server's kernel answers RST
# Opens a TCP connection to the echo server, sends a line, reads it back, and
# keeps the connection until stdin closes.
HOLD = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"x" * 1000 + b"\n")
got = b""
while len(got) < 1001:
    got += s.recv(4096)
print("open", flush=True)
sys.stdin.read()
s.close()
"""


def quick_ends(bed: Any) -> None:
    for key, value in QUICK_ENDS.items():
        sh.run("sysctl", "-qw", f"net.netfilter.{key}={value}", ns=bed.host)


def config(bed: Any, state: Any, **over: Any) -> Any:
    return agent_config(bed, state, flows={"reap_interval_s": 0.5}, **over)


async def records(agent: Agent, sandbox_id: str, want: Any, timeout: float = 60.0) -> list[FlowRecord]:
    """The sandbox's records once `want(records)` holds (or as they are at the deadline)."""
    found: list[FlowRecord] = []

    def check() -> bool:
        agent.flows.store.flush()
        found[:] = agent.flows.store.query(sandbox_id)
        return bool(want(found))
    await eventually(check, timeout=timeout, interval=0.3)
    return found


def one(found: list[FlowRecord], **match: Any) -> FlowRecord:
    hits = [r for r in found if all(getattr(r, k) == v for k, v in match.items())]
    assert len(hits) == 1, (match, found)
    return hits[0]


async def test_closed_reset_udp_and_refused_connections_are_recorded(bed, tmp_path):
    quick_ends(bed)
    agent = Agent(config(bed, tmp_path / "state"))
    await agent.start()
    try:
        net = await agent.allocate("fl-1", {"policy": {"internet": True, "deny_out": [WEB2_IP]}})
        guest = await asyncio.to_thread(LightGuest.attach, bed, net, "f")
        ok, body = await asyncio.to_thread(guest.fetch, f"http://{WEB_IP}:{HTTP_PORT}/", 3.0)
        assert ok, body
        assert not (await asyncio.to_thread(guest.fetch, f"tcp://{WEB_IP}:{CLOSED_PORT}", 1.0))[0]
        asked = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.dns_client", "ask", DNS_IP,
                                        "public.test", ns=guest.name)   # straight to the bed's server: UDP out
        assert json.loads(asked.stdout)["answers"] == [WEB_IP]
        assert not (await asyncio.to_thread(guest.fetch, f"http://{WEB2_IP}:{HTTP_PORT}/", 1.0))[0]
        sip = str(net.sandbox_ip)

        def complete(found: list[FlowRecord]) -> bool:
            ends = {(r.destination, r.destination_port, r.end_reason) for r in found}
            return {(WEB_IP, HTTP_PORT, codec.CLOSED), (WEB_IP, CLOSED_PORT, codec.RESET),
                    (DNS_IP, 53, codec.IDLE), (WEB2_IP, HTTP_PORT, codec.REFUSED)} <= ends
        found = await records(agent, "fl-1", complete)
        assert complete(found), found

        http = one(found, destination=WEB_IP, destination_port=HTTP_PORT)
        assert (http.direction, http.protocol, http.source, http.end_reason) == ("egress", "tcp", sip, codec.CLOSED)
        assert http.packets_sent >= 3 and http.packets_received >= 3
        # the answer (headers and body) came back inside the flow; the GET went out in it
        assert http.bytes_received > len(body) > 0 and http.bytes_sent > 40 * http.packets_sent
        assert 0 < http.start <= http.end and not http.while_down and http.domain == ""

        reset = one(found, destination=WEB_IP, destination_port=CLOSED_PORT)
        assert (reset.protocol, reset.end_reason, reset.packets_sent, reset.packets_received) == (
            "tcp", codec.RESET, 1, 1)

        udp = one(found, destination=DNS_IP, destination_port=53)
        assert (udp.protocol, udp.end_reason, udp.packets_sent, udp.packets_received) == ("udp", codec.IDLE, 1, 1)
        assert udp.bytes_sent > 28 and udp.bytes_received > udp.bytes_sent

        refused = [r for r in found if r.destination == WEB2_IP]
        assert len(refused) == 1, refused    # a SYN and its retransmits: one record
        assert (refused[0].protocol, refused[0].destination_port, refused[0].end_reason) == (
            "tcp", HTTP_PORT, codec.REFUSED)
        guest.stop()
    finally:
        await agent.stop()


async def test_a_dns_admitted_destination_names_its_domain(bed, tmp_path):
    quick_ends(bed)
    agent = Agent(config(bed, tmp_path / "state"))
    await agent.start()
    try:
        net = await agent.allocate("fl-dns", {"policy": {"internet": False, "allow_out": ["public.test"]}})
        guest = await asyncio.to_thread(LightGuest.attach, bed, net, "d")
        assert (await dns(guest, "ask", "public.test"))["answers"] == [WEB_IP]
        ok, body = await asyncio.to_thread(guest.fetch, f"http://{WEB_IP}:{HTTP_PORT}/", 3.0)
        assert ok, body
        found = await records(agent, "fl-dns", lambda f: any(r.destination == WEB_IP for r in f))
        http = one(found, destination=WEB_IP)
        assert (http.domain, http.end_reason, http.destination_port) == ("public.test", codec.CLOSED, HTTP_PORT)
        guest.stop()
    finally:
        await agent.stop()


async def test_a_connection_that_ends_while_the_agent_is_down_is_recorded_at_the_next_start(bed, tmp_path):
    quick_ends(bed)
    state = tmp_path / "state"
    first = Agent(config(bed, state))
    await first.start()
    guest = holder = None
    try:
        net = await first.allocate("fl-down", {"policy": {"internet": True}})
        guest = await asyncio.to_thread(LightGuest.attach, bed, net, "w")
        holder = subprocess.Popen(["ip", "netns", "exec", guest.name, sh.PYTHON, "-c", HOLD, WEB_IP, str(ECHO_PORT)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert await asyncio.to_thread(holder.stdout.readline) == "open\n"
        await first.stop()

        holder.stdin.close()      # the connection ends while no agent runs
        await asyncio.to_thread(holder.wait, 10)
        gone = await eventually(lambda: not echo_entries(bed), timeout=60)
        assert gone, "the connection's conntrack entry did not go"

        second = Agent(config(bed, state))
        await second.start()
        try:
            found = await records(second, "fl-down", lambda f: any(r.destination_port == ECHO_PORT for r in f))
            rec = one(found, destination=WEB_IP, destination_port=ECHO_PORT)
            assert rec.while_down and rec.protocol == "tcp" and rec.direction == "egress"
            assert rec.bytes_sent > 1000 and rec.bytes_received > 1000   # the counters as last seen, echo included
        finally:
            await second.stop()
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        if guest is not None:
            guest.stop()


def echo_entries(bed: Any) -> list[str]:
    out = sh.run("conntrack", "-L", "-p", "tcp", "--dport", str(ECHO_PORT), ns=bed.host, check=False).stdout
    return [line for line in out.splitlines() if line.strip()]

"""Raw TCP through the edge to a real guest (issue 24 part 3): a light guest runs a TCP
echo server on a port exposed in mode tcp through the agent's API; another sandbox
reaches it through the edge's TCP listener and through the 443 front (--tcp-on-https)
on the host's uplink address, TLS with the port's name as SNI, real packets through
the DNAT of the exposed port."""
from __future__ import annotations

import asyncio

from netagent.agent import Agent
from netagent.registry.sqlite import SqliteRegistry
from tests.conftest import agent_config
from tests.edge.hap import DOMAIN, running_edge
from tests.testbed import sh
from tests.testbed.bed import UPLINK_IP, LightGuest
from tests.testbed.tls import wildcard_pem

TCP_EDGE = f"{UPLINK_IP}:8444"
FRONT = f"{UPLINK_IP}:8443"          # the HTTPS listener with the SNI front (443 in production)
ECHO = 5000

# Run in the client guest's netns: TLS to the edge, SNI = the port's name, one echo.
CLIENT = """
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
with socket.create_connection((sys.argv[1], int(sys.argv[4])), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname=sys.argv[2]) as s:
        s.sendall(b"hello guest")
        got = b""
        while len(got) < 11 and (chunk := s.recv(100)):
            got += chunk
        print(got.decode())
"""


async def test_a_tcp_port_of_a_real_guest_through_the_edge(bed, tmp_path):
    ca, pem = wildcard_pem(tmp_path / "pki", DOMAIN)
    registry_url = f"sqlite://{tmp_path}/registry.db"
    agent = Agent(agent_config(bed, tmp_path / "state", edge_addresses=[TCP_EDGE, FRONT], registry_url=registry_url,
                               probe_interval_s=0.2, probe_fast_interval_s=0.1, pool_size=2))
    await agent.start()
    registry = SqliteRegistry(registry_url)
    await registry.connect()
    guests: list[LightGuest] = []
    try:
        async with running_edge(tmp_path / "edge", registry, netns=bed.host, http_listen=("127.0.0.1:18081",),
                                tcp_listen=(TCP_EDGE,), tls_pem=str(pem), https_listen=(FRONT,),
                                tcp_on_https=True):
            server = LightGuest.attach(bed, await agent.allocate("tcp-b"), "b")
            guests.append(server)
            bed.start_server(server.name, "--tcp-echo", str(ECHO))
            client = LightGuest.attach(bed, await agent.allocate("tcp-a"), "a")
            guests.append(client)
            await agent.expose("tcp-b", ECHO)
            await agent.set_port_access("tcp-b", ECHO, mode="tcp")
            for edge_port in ("8444", "8443"):
                out = ""
                for _ in range(50):               # until the control plane has the record
                    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-c", CLIENT, UPLINK_IP,
                                                  f"{ECHO}-tcp-b.{DOMAIN}", str(ca), edge_port, ns=client.name,
                                                  check=False, timeout=20)
                    out = res.stdout.strip()
                    if out:
                        break
                    await asyncio.sleep(0.1)
                assert out == "hello guest", (edge_port, res.stderr[-1000:])
    finally:
        for guest in guests:
            guest.stop()
        await registry.close()
        await agent.stop()

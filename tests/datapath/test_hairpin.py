"""Hairpin (issue 18): sandboxes open other sandboxes' public URLs through the
HAProxy edge listening on the host's own uplink address (`edge_addresses`),
with real packets from light guests."""
from __future__ import annotations

import asyncio
import json

from netagent.agent import Agent
from netagent.registry.sqlite import SqliteRegistry
from tests.conftest import agent_config
from tests.datapath.helpers import counter_packets
from tests.edge.hap import DOMAIN, running_edge
from tests.testbed import sh
from tests.testbed.bed import ECHO_PORT, HOST_SERVICE_PORT, HTTP_PORT, RFC1918_IP, UPLINK_IP, LightGuest

EDGE_PORT = 8443
EDGE = f"{UPLINK_IP}:{EDGE_PORT}"
GUEST_PORT = 3000
TOKEN = "hairpin-token-0123456789"


def get(guest: LightGuest, sandbox_id: str, port: int = GUEST_PORT, token: str | None = None,
        timeout: float = 3.0) -> dict:
    """One GET of https-less `{port}-{sandbox_id}.{DOMAIN}` through the edge, from the guest."""
    args = ["--host", f"{port}-{sandbox_id}.{DOMAIN}", "--timeout", str(timeout)]
    res = sh.run(sh.PYTHON, "-m", "tests.testbed.http_get", EDGE, "/", *args,
                 *(["--token", token] if token else []), ns=guest.name, check=False, timeout=timeout + 10)
    return json.loads(res.stdout)


def resolve(guest: LightGuest, name: str) -> dict:
    res = sh.run(sh.PYTHON, "-m", "tests.testbed.dns_client", "ask", guest.gateway, name, ns=guest.name,
                 check=False, timeout=15)
    return json.loads(res.stdout)


def tcp_open(guest: LightGuest, port: int) -> bool:
    ok, body = guest.fetch(f"http://{UPLINK_IP}:{port}/", timeout=1)
    return ok or "timed out" not in body   # refused or answered: the SYN got through


async def until_status(guest: LightGuest, sandbox_id: str, status: int, **kw: object) -> dict:
    answer: dict = {}
    for _ in range(40):
        answer = await asyncio.to_thread(get, guest, sandbox_id, **kw)  # type: ignore[arg-type]
        if answer["status"] == status:
            break
        await asyncio.sleep(0.1)
    return answer


async def test_sandboxes_open_public_urls_through_the_same_host_edge(bed, tmp_path):
    registry_url = f"sqlite://{tmp_path}/registry.db"
    agent = Agent(agent_config(bed, tmp_path / "state", edge_addresses=[EDGE], registry_url=registry_url,
                               probe_interval_s=0.2, probe_fast_interval_s=0.1, pool_size=4))
    await agent.start()
    registry = SqliteRegistry(registry_url)
    await registry.connect()
    guests: list[LightGuest] = []
    try:
        async with running_edge(tmp_path / "edge", registry, netns=bed.host, http_listen=(EDGE,),
                                log_level="info") as (haproxy, _control):
            server = LightGuest.attach(bed, await agent.allocate("web-b"), "b")
            guests.append(server)
            bed.start_server(server.name, "--http", str(GUEST_PORT))
            client = LightGuest.attach(bed, await agent.allocate("client-a"), "a")
            guests.append(client)
            await agent.expose("web-b", GUEST_PORT)
            await agent.expose("web-b", GUEST_PORT + 1)      # nothing listens: 502

            # 200, as from the internet; the edge saw the uplink address, not the sandbox IP.
            answer = await until_status(client, "web-b", 200)
            assert answer["status"] == 200, answer
            sandbox_ip = (await agent.get("client-a")).sandbox_ip
            log = haproxy.log_path.read_text(errors="replace")
            assert f"{UPLINK_IP}:" in log and f"{sandbox_ip}:" not in log, log[-2000:]

            # 502, 404, 401 without the token of a private port, 200 with it.
            assert (await until_status(client, "web-b", 502, port=GUEST_PORT + 1))["status"] == 502
            assert (await asyncio.to_thread(get, client, "nobody"))["status"] == 404
            await agent.set_port_access("web-b", GUEST_PORT, public=False, access_token=TOKEN)
            assert (await until_status(client, "web-b", 401))["status"] == 401
            assert (await until_status(client, "web-b", 200, token=TOKEN))["status"] == 200
            await agent.set_port_access("web-b", GUEST_PORT, public=True)

            # Internet off: the edge address stays shut.
            off = LightGuest.attach(bed, await agent.allocate("off-c", {"policy": {"internet": False}}), "c")
            guests.append(off)
            blocked = counter_packets(bed.host, bed.agent_prefix, "drop_egress_blocked")
            answer = await asyncio.to_thread(get, off, "web-b", timeout=1)
            assert answer["status"] == 0 and "timed out" in answer["body"], answer
            assert counter_packets(bed.host, bed.agent_prefix, "drop_egress_blocked") > blocked

            # A domain allowlist: shut until an allowed name resolved to the edge address.
            listed = LightGuest.attach(bed, await agent.allocate(
                "list-d", {"policy": {"internet": False, "allow_out": [f"*.{DOMAIN}"]}}), "d")
            guests.append(listed)
            answer = await asyncio.to_thread(get, listed, "web-b", timeout=1)
            assert answer["status"] == 0 and "timed out" in answer["body"], answer
            dns = await asyncio.to_thread(resolve, listed, f"{GUEST_PORT}-web-b.{DOMAIN}")
            assert dns["answers"] == [UPLINK_IP], dns
            assert (await asyncio.to_thread(get, listed, "web-b"))["status"] == 200

            # Every other host port stays closed to the internet-on sandbox.
            bed.start_server(bed.host, "--tcp-echo", "22")
            for port in (22, HOST_SERVICE_PORT, 9464, agent.config.dns.proxy_port):
                assert not await asyncio.to_thread(tcp_open, client, port), f"host port {port} reachable"
    finally:
        for guest in guests:
            guest.stop()
        await registry.close()
        await agent.stop()


async def test_a_peer_edge_on_a_private_address_is_the_only_private_pair_opened(bed, tmp_path):
    """A peer's edge on an always-denied (RFC1918) address: forward lets exactly
    that pair through, masqueraded to the uplink address, for internet-on
    sandboxes only; the same address's other ports stay denied."""
    peer_edge = f"{RFC1918_IP}:{HTTP_PORT}"
    agent = Agent(agent_config(bed, tmp_path / "state", edge_addresses=[peer_edge]))
    await agent.start()
    guests: list[LightGuest] = []
    try:
        on = LightGuest.attach(bed, await agent.allocate("peer-on"), "a")
        guests.append(on)
        off = LightGuest.attach(bed, await agent.allocate("peer-off", {"policy": {"internet": False}}), "b")
        guests.append(off)
        ok, body = await asyncio.to_thread(on.fetch, f"http://{peer_edge}/")
        assert ok and json.loads(body)["client"] == UPLINK_IP, body
        denied = counter_packets(bed.host, bed.agent_prefix, "drop_always_deny")
        ok, body = await asyncio.to_thread(on.fetch, f"http://{RFC1918_IP}:{ECHO_PORT}/", 1)
        assert not ok and "timed out" in body, body
        assert counter_packets(bed.host, bed.agent_prefix, "drop_always_deny") > denied
        ok, body = await asyncio.to_thread(off.fetch, f"http://{peer_edge}/", 1)
        assert not ok and "timed out" in body, body
    finally:
        for guest in guests:
            guest.stop()
        await agent.stop()

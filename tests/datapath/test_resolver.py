"""The gateway resolver with real packets: light guests ask 169.254.0.22:53
(the address allocate's boot argument names), the slot DNATs to the agent's
proxy, which asks the test bed's DNS server (tests/testbed/dns_server.py)."""
from __future__ import annotations

import asyncio
import json

from netagent.agent import Agent
from netagent.state import StateStore
from tests.conftest import agent_config
from tests.datapath.helpers import counter_packets, elements
from tests.testbed import sh
from tests.testbed.bed import ECHO_PORT, HTTP_PORT, WEB2_IP, WEB_IP, LightGuest
from tests.testbed.dns_flood import FLOOD_QUERIES, probe_others

GATEWAY = "169.254.0.22"


async def dns(guest: LightGuest, *args: str, timeout: float = 60) -> dict:
    """Off the event loop: the agent's proxy runs on it."""
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.dns_client", args[0], GATEWAY,
                                  *args[1:], ns=guest.name, timeout=timeout)
    return json.loads(res.stdout)


async def reach(guest: LightGuest, ip: str, port: int = HTTP_PORT) -> bool:
    url = f"http://{ip}:{port}/" if port == HTTP_PORT else f"tcp://{ip}:{port}"
    return (await asyncio.to_thread(guest.fetch, url, 0.8))[0]


def admitted(bed, sandbox_ip: str) -> list[str]:
    return [json.dumps(e) for e in elements(bed.host, bed.agent_prefix, "fqdn_ips") if sandbox_ip in json.dumps(e)]


async def attach(bed, agent, sandbox_id: str, policy: dict | None, tag: str) -> tuple[LightGuest, str]:
    net = await agent.allocate(sandbox_id, {"policy": policy} if policy else None)
    assert net.boot_ip_arg.endswith(f":off:{GATEWAY}")
    return LightGuest.attach(bed, net, tag), str(net.sandbox_ip)


async def test_every_sandbox_resolves_in_its_mode(bed, agent):
    default, default_ip = await attach(bed, agent, "res-default", None, "d")
    listed, _ = await attach(bed, agent, "res-listed", {"internet": False, "allow_out": ["public.test"]}, "l")
    closed, _ = await attach(bed, agent, "res-closed", {"internet": False}, "c")

    # Default policy (internet on): every name and type resolves, nothing is admitted.
    assert await dns(default, "ask", "public.test") == {"rcode": "NOERROR", "answers": [WEB_IP], "types": ["A"]}
    assert (await dns(default, "ask", "other.test"))["answers"] == [WEB2_IP]
    assert (await dns(default, "ask", "public.test", "TXT"))["answers"] == ['"hello"']
    assert (await dns(default, "ask", "public.test", "MX"))["types"] == ["MX"]
    assert await dns(default, "ask", "public.test", "AAAA") == {"rcode": "NOERROR", "answers": [], "types": []}
    assert (await dns(default, "ask", "missing.test", "AAAA"))["rcode"] == "NXDOMAIN"
    assert (await dns(default, "ask", "missing.test"))["rcode"] == "NXDOMAIN"
    assert admitted(bed, default_ip) == []

    # Domain allowlist: listed names resolve and connect; the rest is refused, whatever the type.
    assert (await dns(listed, "ask", "public.test"))["answers"] == [WEB_IP]
    assert await reach(listed, WEB_IP)
    assert await dns(listed, "ask", "public.test", "AAAA") == {"rcode": "NOERROR", "answers": [], "types": []}
    assert (await dns(listed, "ask", "public.test", "TXT"))["answers"] == ['"hello"']
    for rdtype in ("A", "AAAA", "TXT"):
        assert (await dns(listed, "ask", "other.test", rdtype))["rcode"] == "REFUSED"
    assert not await reach(listed, WEB2_IP)

    # Internet off without domains: refused.
    assert (await dns(closed, "ask", "public.test"))["rcode"] == "REFUSED"
    assert not await reach(closed, WEB_IP)


async def test_a_cached_answer_admits_nothing_for_a_sandbox_whose_policy_does_not_allow_the_name(bed, agent):
    first, first_ip = await attach(bed, agent, "cache-1", {"internet": False, "allow_out": ["*.cdn.test"]}, "a")
    # Internet on, but the name's address is denied: only an admission could open it.
    denied, denied_ip = await attach(bed, agent, "cache-2", {"internet": True, "deny_out": [f"{WEB2_IP}/32"]}, "b")
    second, second_ip = await attach(bed, agent, "cache-3", {"internet": False, "allow_out": ["*.cdn.test"]}, "c")
    other, other_ip = await attach(bed, agent, "cache-4", {"internet": False, "allow_out": ["public.test"]}, "o")
    assert agent.dns is not None

    assert (await dns(first, "ask", "x.cdn.test"))["answers"] == [WEB2_IP]      # a miss: upstream
    assert admitted(bed, first_ip) and await reach(first, WEB2_IP)
    misses = agent.dns.stats["cache_misses"]

    assert (await dns(denied, "ask", "x.cdn.test"))["answers"] == [WEB2_IP]     # a hit
    assert (await dns(other, "ask", "x.cdn.test"))["rcode"] == "REFUSED"
    assert (await dns(second, "ask", "x.cdn.test"))["answers"] == [WEB2_IP]     # a hit, admitted for it
    assert agent.dns.stats["cache_misses"] == misses and agent.dns.stats["cache_hits"] >= 2

    assert admitted(bed, denied_ip) == [] and not await reach(denied, WEB2_IP, ECHO_PORT)
    assert admitted(bed, other_ip) == [] and not await reach(other, WEB2_IP)
    assert admitted(bed, second_ip) and await reach(second, WEB2_IP)


async def test_bad_queries_get_an_error_or_nothing_and_the_resolver_keeps_serving(bed, agent):
    guest, _ = await attach(bed, agent, "bad-1", None, "a")
    bystander, _ = await attach(bed, agent, "bad-2", None, "b")
    got = await dns(guest, "bad")
    assert got == {"garbage": "dropped", "two_questions": "FORMERR", "tcp_64k": "closed", "good": "NOERROR"}, got
    assert (await dns(bystander, "ask", "public.test"))["answers"] == [WEB_IP]


async def test_a_flood_from_one_sandbox_is_cut_in_the_kernel_and_the_others_lose_nothing(bed, agent):
    """The others' p99 under the flood (target < 5 ms) is a speed figure:
    tests/bench/dns_flood_bench.py measures it against the same run's quiet p99."""
    nets = [await agent.allocate(f"flood-{i}") for i in range(3)]
    flooder, others = nets[0], nets[1:]
    await agent.wait_pool_ready()   # no slot builds in the background while measuring
    quiet, _ = await probe_others(bed, agent, flooder, others, during_flood=False)
    loud, flood = await probe_others(bed, agent, flooder, others, during_flood=True)
    print("quiet:", quiet, "during the flood:", loud, "flood:", flood)
    assert flood is not None and flood["sent"] == FLOOD_QUERIES
    for res in quiet + loud:
        assert res["lost"] == 0, res
    assert counter_packets(bed.host, bed.agent_prefix, "drop_dns_rate") >= 9_000    # cut in the kernel
    await asyncio.sleep(1.0)
    flooder_guest = LightGuest.attach(bed, flooder, "f")
    assert (await dns(flooder_guest, "ask", "public.test"))["rcode"] == "NOERROR"  # served again once it stops


async def test_a_start_that_reloads_the_table_keeps_what_sandboxes_resolved(bed, tmp_path):
    """An upgrade whose rules differ makes the next start reload the host table
    (#26): an allowlisted sandbox keeps reaching the address it resolved before,
    without resolving again, and the admission keeps the time it had left."""
    agent = Agent(agent_config(bed, tmp_path / "state"))
    await agent.start()
    try:
        guest, sandbox_ip = await attach(bed, agent, "keep-1", {"internet": False, "allow_out": ["public.test"]}, "k")
        assert not await reach(guest, WEB_IP, ECHO_PORT)                       # not before it resolves
        assert (await dns(guest, "ask", "public.test"))["answers"] == [WEB_IP]
        assert await reach(guest, WEB_IP, ECHO_PORT)
        before = timed_admissions(bed, sandbox_ip)
    finally:
        await agent.stop()
    store = StateStore(tmp_path / "state")     # rules of an older version: the start reloads the table
    store.set_meta("ruleset_fingerprint", "from-an-older-version")
    store.close()
    upgraded = Agent(agent_config(bed, tmp_path / "state"))
    await upgraded.start()
    try:
        assert upgraded.keeper.last_reloaded
        after = timed_admissions(bed, sandbox_ip)
        assert after.keys() == before.keys() == {WEB_IP}
        assert 0 < after[WEB_IP] <= before[WEB_IP]
        assert await reach(guest, WEB_IP, ECHO_PORT)
    finally:
        await upgraded.stop()


def timed_admissions(bed, sandbox_ip: str) -> dict[str, int]:
    """Admitted address -> seconds left, for one sandbox."""
    return {e["elem"]["val"]["concat"][1]: e["elem"]["expires"]
            for e in elements(bed.host, bed.agent_prefix, "fqdn_ips") if e["elem"]["val"]["concat"][0] == sandbox_ip}

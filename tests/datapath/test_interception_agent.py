"""Request interception through the whole agent (issue #23): a light guest
resolves api.test through the agent's resolver, which steers the answer into
intercept_dst (the fixed rule in rules/netagent.nft); the guest's HTTPS request
goes to the agent's HAProxy, which injects the secret and sends it on to the
upstream in the internet netns (its own CA). The secret's value is then looked
for everywhere the agent writes: state dir (state.db, registry.db, ...), run
dir, events, request log, the agent's log output."""
from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from netagent.agent import Agent
from netagent.errors import FailedPrecondition, InvalidArgument
from tests.conftest import agent_config
from tests.datapath.helpers import elements
from tests.intercept.bed import read_tree
from tests.testbed import sh, tls
from tests.testbed.bed import LightGuest

API_IP = "203.0.113.13"    # api.test in tests/testbed/dns_server.py
SECRET = "sk-agent-5e4d3c2b1a09-never-in-clear"
RULES = [{"id": "no-admin", "domain": "api.test", "path": "/admin", "action": "deny"},   # first match wins
         {"id": "auth", "domain": "api.test",
          "transforms": [{"op": "set", "header": "Authorization", "value": "Bearer ${secret:API_KEY}"}]}]


@pytest.fixture
def upstream(bed, tmp_path):
    d = tmp_path / "upstream"
    d.mkdir()
    ca = tls.make_ca(d, "upstream-ca")
    crt, key = tls.issue(d, "api", "DNS:api.test")
    sh.ip("addr", "add", f"{API_IP}/32", "dev", "lo", ns=bed.inet)
    log = d / "requests.jsonl"
    bed.start_module(bed.inet, "tests.testbed.echo_upstream", API_IP, str(crt), str(key), str(log))
    return ca, log


@pytest.fixture
async def ic_agent(bed, upstream, tmp_path):
    ca, _ = upstream
    a = Agent(agent_config(bed, tmp_path / "state", intercept={"ca_bundle": str(ca), "run_dir": str(tmp_path / "run")}))
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


def seen_upstream(log) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def auth_of(request: dict) -> list[str]:
    return [v for k, v in request["headers"] if k.lower() == "authorization"]


async def guest_curl(guest: LightGuest, ca_file, url: str, address: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    res = await asyncio.to_thread(sh.run, "curl", "-sS", "--max-time", "10", "--cacert", str(ca_file),
                                  "--resolve", f"api.test:443:{address}", "-w", "\n%{http_code}", url,
                                  ns=guest.name, check=False, timeout=30)
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body


async def resolve(guest: LightGuest, name: str) -> str:
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.tls_client", "resolve", name,
                                  ns=guest.name, check=False)
    return res.stdout.strip()


async def test_secret_injected_upstream_and_absent_everywhere_else(bed, ic_agent, upstream, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="netagent")
    agent, (_, upstream_log) = ic_agent, upstream
    assert await agent.set_secret("ic-a", "API_KEY", SECRET) == ["API_KEY"]
    net = await agent.allocate("ic-a")
    await agent.set_request_rules("ic-a", RULES)
    guest = await asyncio.to_thread(LightGuest.attach, bed, net, "a")
    guest_ca = tmp_path / "guest-ca.pem"
    guest_ca.write_text(agent.intercept_ca())
    watch = agent.events.watch(0, {"ic-a"})

    assert await resolve(guest, "api.test") == API_IP        # the answer steers the address
    steered = elements(bed.host, bed.agent_prefix, "intercept_dst")
    assert any(API_IP in json.dumps(e) for e in steered), steered
    code, body = await guest_curl(guest, guest_ca, "https://api.test/v1/models", API_IP)
    assert code == 200, body
    (req,) = seen_upstream(upstream_log)
    assert req["sni"] == "api.test" and auth_of(req) == [f"Bearer {SECRET}"]
    code, body = await guest_curl(guest, guest_ca, "https://api.test/admin", API_IP)
    assert code == 403 and json.loads(body)["rule"] == "no-admin"

    records = []
    async with asyncio.timeout(20):
        async for ev in watch:
            if ev.type == "http_request":
                records.append(ev.data["request"])
                if len(records) == 2:
                    break
    assert [(r["path"], r["status"], r["rule"], r["transform"]) for r in records] == [
        ("/v1/models", 200, "auth", "yes"), ("/admin", 403, "no-admin", "no")]
    log_lines = (tmp_path / "state" / "requests.jsonl").read_text().splitlines()
    assert len(log_lines) == 2 and json.loads(log_lines[0])["sandbox"] == "ic-a"

    assert agent.secret_names("ic-a") == ["API_KEY"]
    with pytest.raises(FailedPrecondition, match="auth"):
        await agent.delete_secret("ic-a", "API_KEY")
    everywhere = read_tree(tmp_path / "state") + read_tree(tmp_path / "run")
    assert SECRET.encode() not in everywhere
    assert SECRET not in caplog.text
    events = [e async for e in _all_events(agent)]
    assert SECRET not in json.dumps(events)
    assert oct(os.stat(tmp_path / "state" / "keys" / "secrets.key").st_mode & 0o777) == "0o600"
    # haproxy killed: the agent restarts it with the rules and the secret pushed again
    proc = agent.intercept.proxy.proc
    os.kill(proc.pid, 9)
    await asyncio.to_thread(proc.wait, 5)
    async with asyncio.timeout(30):
        while (await guest_curl(guest, guest_ca, "https://api.test/v1/again", API_IP))[0] != 200:
            await asyncio.sleep(0.2)
    assert auth_of(seen_upstream(upstream_log)[-1]) == [f"Bearer {SECRET}"]
    assert oct(os.stat(tmp_path / "state" / "intercept" / "ca" / "ca.key").st_mode & 0o777) == "0o600"


async def _all_events(agent):  # type: ignore[no-untyped-def]
    _, latest = agent.store.event_bounds()
    async for ev in agent.events.watch(0):
        yield {"type": ev.type, "data": ev.data}
        if ev.cursor >= latest:
            return


async def test_rules_naming_a_missing_secret_are_refused_with_nothing_changed(ic_agent):
    agent = ic_agent
    await agent.allocate("ic-b")
    with pytest.raises(InvalidArgument, match="API_KEY"):
        await agent.set_request_rules("ic-b", RULES)
    assert (await agent.get_request_rules("ic-b")).rules == ()
    with pytest.raises(InvalidArgument, match="CR, LF"):
        await agent.set_secret("ic-b", "API_KEY", "v\r\nX-Evil: 1")
    assert agent.secret_names("ic-b") == []


async def test_a_rule_does_not_open_an_address_the_policy_refuses(bed, ic_agent, upstream):
    """Internet on, but deny_out covers api.test's address: the resolver answers
    (internet on), the name is ruled, yet nothing is steered, since the
    redirect would skip the forward chain where the deny applies."""
    agent, (_, upstream_log) = ic_agent, upstream
    await agent.set_secret("ic-c", "API_KEY", SECRET)
    net = await agent.allocate("ic-c", {"policy": {"internet": True, "deny_out": [f"{API_IP}/32"]}})
    await agent.set_request_rules("ic-c", RULES)
    guest = await asyncio.to_thread(LightGuest.attach, bed, net, "c")
    assert await resolve(guest, "api.test") == API_IP
    assert not [e for e in elements(bed.host, bed.agent_prefix, "intercept_dst") if API_IP in json.dumps(e)]
    code, _ = await guest_curl(guest, "/dev/null", "https://api.test/v1/models", API_IP)
    assert code == 0 and seen_upstream(upstream_log) == []


async def test_dropping_a_rule_hands_its_addresses_back_to_the_kernel(bed, ic_agent, upstream, tmp_path):
    agent, (upstream_ca, upstream_log) = ic_agent, upstream
    await agent.set_secret("ic-e", "API_KEY", SECRET)
    net = await agent.allocate("ic-e")
    await agent.set_request_rules("ic-e", RULES)
    guest = await asyncio.to_thread(LightGuest.attach, bed, net, "e")
    trust = tmp_path / "trust.pem"      # the host CA and the upstream's: either path verifies
    trust.write_text(agent.intercept_ca() + upstream_ca.read_text())
    assert await resolve(guest, "api.test") == API_IP
    assert (await guest_curl(guest, trust, "https://api.test/ruled", API_IP))[0] == 200
    await agent.set_request_rules("ic-e", [])
    assert not [e for e in elements(bed.host, bed.agent_prefix, "intercept_dst") if API_IP in json.dumps(e)]
    assert (await guest_curl(guest, trust, "https://api.test/direct", API_IP))[0] == 200   # no new lookup
    ruled, direct = seen_upstream(upstream_log)
    assert auth_of(ruled) == [f"Bearer {SECRET}"] and auth_of(direct) == []


async def test_a_secret_set_for_a_label_serves_every_sandbox_with_it(bed, ic_agent, upstream, tmp_path):
    agent, (_, upstream_log) = ic_agent, upstream
    assert await agent.set_secret("", "API_KEY", SECRET, label="team=a") == ["API_KEY"]
    net = await agent.allocate("ic-f", {"labels": {"team": "a"}})
    await agent.set_request_rules("ic-f", RULES)                    # the label's secret counts
    await agent.allocate("ic-g", {"labels": {"team": "b"}})
    with pytest.raises(InvalidArgument, match="API_KEY"):
        await agent.set_request_rules("ic-g", RULES)
    guest = await asyncio.to_thread(LightGuest.attach, bed, net, "f")
    guest_ca = tmp_path / "guest-ca.pem"
    guest_ca.write_text(agent.intercept_ca())
    assert await resolve(guest, "api.test") == API_IP
    assert (await guest_curl(guest, guest_ca, "https://api.test/label", API_IP))[0] == 200
    with pytest.raises(FailedPrecondition, match="ic-f"):
        await agent.delete_secret("", "API_KEY", label="team=a")
    await agent.set_secret("ic-f", "API_KEY", "own-value-overrides")   # the sandbox's own wins
    assert (await guest_curl(guest, guest_ca, "https://api.test/own", API_IP))[0] == 200
    first, second = seen_upstream(upstream_log)
    assert auth_of(first) == [f"Bearer {SECRET}"] and auth_of(second) == ["Bearer own-value-overrides"]
    assert agent.secret_names("", label="team=a") == ["API_KEY"]
    assert SECRET.encode() not in read_tree(tmp_path / "state") + read_tree(tmp_path / "run")


async def test_rules_and_secrets_survive_an_agent_restart(bed, upstream, tmp_path):
    ca, upstream_log = upstream
    config = agent_config(bed, tmp_path / "state", intercept={"ca_bundle": str(ca), "run_dir": str(tmp_path / "run")})
    first = Agent(config)
    await first.start()
    try:
        await first.set_secret("ic-d", "API_KEY", SECRET)
        net = await first.allocate("ic-d")
        await first.set_request_rules("ic-d", RULES)
    finally:
        await first.stop()
    again = Agent(config)
    await again.start()
    try:
        guest = await asyncio.to_thread(LightGuest.attach, bed, net, "d")
        guest_ca = tmp_path / "guest-ca.pem"
        guest_ca.write_text(again.intercept_ca())
        assert await resolve(guest, "api.test") == API_IP
        code, body = await guest_curl(guest, guest_ca, "https://api.test/after", API_IP)
        assert code == 200, body
        (req,) = seen_upstream(upstream_log)
        assert auth_of(req) == [f"Bearer {SECRET}"]
    finally:
        await again.stop()

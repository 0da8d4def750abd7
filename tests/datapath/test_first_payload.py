"""The layered domain check with real packets from light guests: a TLS and
HTTP server in the internet netns serves several names on one address (a
throwaway certificate from openssl); a guest allowed `allowed.test` that asks
for `other.test` there, by SNI or by Host, is reset and logged."""
from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from netagent.agent import Agent
from tests.conftest import agent_config
from tests.datapath.helpers import counter_packets
from tests.datapath.test_denied_flows import denied_events
from tests.testbed import sh
from tests.testbed.bed import WEB_IP, LightGuest

FAST_IP = "203.0.113.12"     # fast.test in tests/testbed/dns_server.py
NAMES = ("allowed.test", "other.test", "public.test", "fast.test")


@pytest.fixture
def tls_servers(bed, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=allowed.test", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=" + ",".join(f"DNS:{n}" for n in NAMES)],
                   check=True, capture_output=True)
    sh.ip("addr", "add", f"{FAST_IP}/32", "dev", "lo", ns=bed.inet)
    bed.start_module(bed.inet, "tests.testbed.tls_server", WEB_IP, str(cert), str(key), "--hello", FAST_IP)
    return bed


@pytest.fixture
async def fp_agent(tls_servers, tmp_path):
    a = Agent(agent_config(tls_servers, tmp_path / "state", new_conn_rate=5000, new_conn_burst=5000,
                             dns_ttl_floor_s=60,    # allowed.test has TTL 2
                             first_payload={"verdict_events_s": 0.2}))
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


async def guest_run(guest: LightGuest, *args: str, timeout: float = 60) -> str:
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.tls_client", *args, ns=guest.name,
                                  timeout=timeout)
    return res.stdout.strip()


async def allowlisted_guest(bed, agent, sid: str, *names: str) -> LightGuest:
    net = await agent.allocate(sid, {"policy": {"internet": False, "allow_out": list(names)}})
    return await asyncio.to_thread(LightGuest.attach, bed, net, sid[-1])


async def test_other_name_on_an_admitted_address_is_reset_by_sni_and_by_host(fp_agent, tls_servers):
    bed, agent = tls_servers, fp_agent
    guest = await allowlisted_guest(bed, agent, "fp-a", "allowed.test")
    assert await guest_run(guest, "resolve", "allowed.test") == WEB_IP
    ok_tls = await guest_run(guest, "get", WEB_IP, "443", "allowed.test", "allowed.test")
    assert ok_tls == "ok served sni=allowed.test host=allowed.test"
    assert await guest_run(guest, "get", WEB_IP, "80", "-", "allowed.test") == "ok served host=allowed.test"
    # The same address, another name: reset, not a hang.
    assert await guest_run(guest, "get", WEB_IP, "443", "other.test", "other.test") == "reset"
    assert await guest_run(guest, "get", WEB_IP, "80", "-", "other.test") == "reset"
    # Control: the server does serve other.test (from the host netns, unchecked).
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.tls_client", "get", WEB_IP, "443",
                                  "other.test", "other.test", ns=bed.host)
    assert res.stdout.strip() == "ok served sni=other.test host=other.test"
    events = await denied_events(agent, "fp-a", until=lambda found: {e["reason"] for e in found} >= {"sni", "host"})
    seen = {(e["reason"], e["destination"], e["port"]) for e in events}
    assert {("sni", WEB_IP, 443), ("host", WEB_IP, 80)} <= seen, events
    counts = agent.first_payload.verdicts
    assert counts[("fp-a", WEB_IP, "sni", "allowed")] == 1 and counts[("fp-a", WEB_IP, "sni", "denied")] == 1
    assert counts[("fp-a", WEB_IP, "host", "allowed")] == 1 and counts[("fp-a", WEB_IP, "host", "denied")] == 1
    # WatchEvents: per-destination verdict counts, summed over the interval events
    totals: dict[tuple[str, str], list[int]] = {}
    async with asyncio.timeout(5):
        async for ev in agent.events.watch(0, {"fp-a"}):
            if ev.type == "first_payload_verdicts":
                for v in ev.data["verdicts"]:
                    t = totals.setdefault((v["destination"], v["reason"]), [0, 0])
                    t[0], t[1] = t[0] + v["allowed"], t[1] + v["denied"]
            if totals == {(WEB_IP, "sni"): [1, 1], (WEB_IP, "host"): [1, 1]}:
                break
    guest.stop()


async def test_no_sni_passes_only_while_the_address_was_admitted_for_one_name(fp_agent, tls_servers):
    bed, agent = tls_servers, fp_agent
    guest = await allowlisted_guest(bed, agent, "fp-b", "allowed.test", "public.test")
    assert await guest_run(guest, "resolve", "allowed.test") == WEB_IP
    assert await guest_run(guest, "get", WEB_IP, "443", "-", "allowed.test") == "ok served sni=- host=allowed.test"
    assert await guest_run(guest, "resolve", "public.test") == WEB_IP      # now two names admitted it
    assert await guest_run(guest, "get", WEB_IP, "443", "-", "allowed.test") == "reset"
    assert (await guest_run(guest, "get", WEB_IP, "443", "public.test", "public.test")).startswith("ok ")
    guest.stop()


async def test_established_flows_stay_in_the_kernel(fp_agent, tls_servers):
    """An allowed flow sends a handful of packets to the queue, however long it runs."""
    bed, agent = tls_servers, fp_agent
    guest = await allowlisted_guest(bed, agent, "fp-c", "allowed.test")
    assert await guest_run(guest, "resolve", "allowed.test") == WEB_IP
    before = agent.first_payload.packets
    assert (await guest_run(guest, "get", WEB_IP, "443", "allowed.test", "allowed.test")).startswith("ok ")
    # the handshake's ACK and the ClientHello; the client's later TLS records
    # (Finished, the request) and its ACKs are not queued
    assert agent.first_payload.packets - before <= 3, agent.first_payload.packets - before
    guest.stop()


async def test_quic_is_dropped_and_a_client_falls_back_to_tcp(fp_agent, tls_servers):
    bed, agent = tls_servers, fp_agent
    guest = await allowlisted_guest(bed, agent, "fp-q", "allowed.test")
    assert await guest_run(guest, "resolve", "allowed.test") == WEB_IP
    before = counter_packets(bed.host, bed.agent_prefix, "drop_quic")
    result = await guest_run(guest, "quic", WEB_IP, "allowed.test")
    assert result == "tcp-fallback ok served sni=allowed.test host=allowed.test"
    assert counter_packets(bed.host, bed.agent_prefix, "drop_quic") - before == 1
    # Control: the UDP endpoint answers a client the check does not cover.
    res = await asyncio.to_thread(sh.run, sh.PYTHON, "-m", "tests.testbed.tls_client", "quic", WEB_IP,
                                  "allowed.test", ns=bed.host)
    assert res.stdout.strip() == "udp"
    events = await denied_events(agent, "fp-q", until=lambda found: any(e["reason"] == "quic" for e in found))
    assert ("quic", WEB_IP, "udp", 443) in {(e["reason"], e["destination"], e["protocol"], e["port"]) for e in events}
    guest.stop()


async def test_a_thousand_new_tls_flows_per_second_keep_working(fp_agent, tls_servers):
    bed, agent = tls_servers, fp_agent
    guest = await allowlisted_guest(bed, agent, "fp-r", "fast.test")
    assert await guest_run(guest, "resolve", "fast.test") == FAST_IP
    drops_before = await asyncio.to_thread(guest.wire_drops)
    out = json.loads(await guest_run(guest, "rate", FAST_IP, "fast.test", "1000", "2"))
    # A flow lost on the test bed's own wire (the frame relay) says nothing about the agent: name it.
    wire_drops = await asyncio.to_thread(guest.wire_drops) - drops_before
    assert wire_drops == 0, f"the test bed's frame relay dropped {wire_drops} frames: {out}"
    assert out["ok"] == 2000 and out["reset"] == out["timeout"] == out["other"] == 0, out
    assert out["rate"] >= 950, out          # the client kept up its 1,000/s
    assert agent.first_payload.verdicts[("fp-r", FAST_IP, "sni", "allowed")] == 2000
    # and the check still bites in the same sandbox
    out = json.loads(await guest_run(guest, "rate", FAST_IP, "other.test", "20", "1"))
    assert out["reset"] == 20, out
    guest.stop()


async def test_an_address_the_policy_names_by_ip_is_not_checked(fp_agent, tls_servers):
    bed, agent = tls_servers, fp_agent
    guest = await allowlisted_guest(bed, agent, "fp-i", "allowed.test", f"{WEB_IP}:443")
    assert await guest_run(guest, "resolve", "allowed.test") == WEB_IP      # admitted by DNS as well
    assert await guest_run(guest, "get", WEB_IP, "443", "other.test", "other.test") == \
        "ok served sni=other.test host=other.test"
    assert await guest_run(guest, "get", WEB_IP, "80", "-", "other.test") == "reset"   # port 80 is not named
    guest.stop()


TFO_SYN = r"""
import sys
from scapy.all import IP, TCP, conf, send
conf.verb = 0
request = b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n"
for port in range(41000, 41005):   # TCP Fast Open: the request rides in the SYN
    send(IP(src=sys.argv[1], dst=sys.argv[2]) / TCP(sport=port, dport=80, flags="S", seq=1000,
                                                    options=[("TFO", b"12345678")]) / request)
"""


async def test_a_syn_carrying_data_by_tcp_fast_open_is_dropped(fp_agent, tls_servers):
    bed, agent = tls_servers, fp_agent
    guest = await allowlisted_guest(bed, agent, "fp-t", "allowed.test")
    assert await guest_run(guest, "resolve", "allowed.test") == WEB_IP
    before = counter_packets(bed.host, bed.agent_prefix, "drop_first_payload_unchecked")
    await asyncio.to_thread(sh.run, sh.PYTHON, "-c", TFO_SYN, guest.guest_ip, WEB_IP, ns=guest.name)
    assert counter_packets(bed.host, bed.agent_prefix, "drop_first_payload_unchecked") - before == 5
    guest.stop()

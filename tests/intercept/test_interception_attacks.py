"""Bad input and attacks against the interceptor (issue 23), on real namespaces."""
from __future__ import annotations

import asyncio
import json
import os
import signal

from netagent.intercept.rules import RuleSet
from tests.testbed import sh

from .bed import API_IP, GUEST2_IP, HOST_G_IP, TLS_PORT, eventually, intercept_bed
from .test_interception import RULES, SECRET, _auth_of, _ruled

# A raw HTTP/1.1 client in the guest: TLS to api.test (trusting CA), sends the
# bytes given in hex, prints what came back.
RAW_CLIENT = """
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
raw = socket.create_connection(("{ip}", 443), timeout=10)
s = ctx.wrap_socket(raw, server_hostname="api.test")
s.sendall(bytes.fromhex(sys.argv[2]))
out = b""
try:
    while chunk := s.recv(65536):
        out += chunk
except (socket.timeout, ssl.SSLError, OSError):
    pass
sys.stdout.write(out.decode(errors="replace"))
"""

SMUGGLES = [
    # CL and TE both: a smuggled request to the denied /admin hides in the body
    b"POST /v1/a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: api.test\r\n\r\n",
    # TE then CL, the body holding a whole request
    b"POST /v1/b HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n"
    b"0\r\n\r\nGET /admin/y HTTP/1.1\r\nHost: api.test\r\n\r\n",
    # an obfuscated TE the upstream might honour
    b"POST /v1/c HTTP/1.1\r\nHost: api.test\r\nContent-Length: 44\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"0\r\n\r\nGET /admin/z HTTP/1.1\r\nHost: api.test\r\n\r\n",
]


def _raw(bed, payload: bytes) -> str:  # type: ignore[no-untyped-def]
    return sh.run(sh.PYTHON, "-c", RAW_CLIENT.format(ip=API_IP), str(bed.combined_ca), payload.hex(),
                  ns=bed.guest, check=False, timeout=30).stdout


async def test_request_smuggling_never_reaches_a_denied_path(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        for payload in SMUGGLES:
            _raw(bed, payload)
        seen = bed.upstream_requests()
        assert not [r for r in seen if r["path"].startswith("/admin")], seen
        # whatever the upstream got, the interceptor decided on and recorded
        await eventually(lambda: len(bed.records) >= len(seen))
        recorded = sorted(r["path"] for r in bed.records)
        assert all(r["path"] in recorded for r in seen)


async def test_oversized_header_is_refused_before_the_upstream(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        big = "X-Big: " + "a" * 20000
        res = bed.curl("https://api.test/v1/x", "--http1.1", "-H", big, "-w", "\n%{http_code}")
        assert res.stdout.rsplit("\n", 1)[1] == "400", res.stdout[-300:]
        # HTTP/2: the stream is refused (curl sees no response at all)
        res = bed.curl("https://api.test/v1/y", "--http2", "-H", big, "-w", "\n%{http_code}")
        assert res.returncode != 0 and res.stdout.rsplit("\n", 1)[1] == "000"
        assert bed.upstream_requests() == []
        ok = bed.curl("https://api.test/v1/after", "-w", "\n%{http_code}")
        assert ok.stdout.rsplit("\n", 1)[1] == "200"


async def test_plain_http_carries_a_secret_only_where_the_rule_says_so(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        bed.steer(API_IP, 80)
        assert bed.curl("http://api.test/plain-1").returncode == 0
        auth = {"op": "set", "header": "Authorization", "value": "Bearer ${secret:API_KEY}"}
        explicit = RuleSet.parse([{"id": "plain-ok", "domain": "api.test", "transforms": [auth],
                                   "secrets_over_plain_http": True}])
        await bed.interceptor.load("198.51.100.2", "sbx-1", explicit, {"API_KEY": SECRET})
        assert bed.curl("http://api.test/plain-2").returncode == 0
        first, second = bed.upstream_requests()
        assert first["path"] == "/plain-1" and _auth_of(first) == []
        assert second["path"] == "/plain-2" and _auth_of(second) == [f"Bearer {SECRET}"]


async def test_guest_cannot_reach_the_proxy_or_its_admin_interface_directly(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        config = bed.interceptor.s.config_path.read_text()
        assert "stats socket " + str(bed.interceptor.s.admin_socket) in config
        assert "ipv4@" not in config and "stats enable" not in config and "stats uri" not in config
        probe = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n"
                 " print('open')\nexcept OSError as e:\n print('closed', e)")
        for port in (TLS_PORT, 15080):
            out = sh.run(sh.PYTHON, "-c", probe, HOST_G_IP, str(port), ns=bed.guest, check=False).stdout
            assert out.startswith("closed"), (port, out)


async def test_a_flooding_guest_does_not_starve_its_neighbour(tmp_path):
    """Guest 1 tries to hold more connections open at the proxy than it accepts
    in all (maxconn 300); its share is capped (100), so guest 2's requests are
    still served, each one."""
    async with intercept_bed(tmp_path, maxconn=300, max_conns_per_source=100) as bed:
        await _ruled(bed)
        await bed.interceptor.load(GUEST2_IP, "sbx-2", RULES, {"API_KEY": SECRET})
        bed.steer(API_IP, 443, src=GUEST2_IP)
        flood = ("import socket,sys,time\nheld=[]\nfor i in range(int(sys.argv[2])):\n"
                 " try: held.append(socket.create_connection((sys.argv[1], 443), timeout=2))\n"
                 " except OSError: pass\nprint(len(held), flush=True)\ntime.sleep(60)")
        proc = sh.popen(sh.PYTHON, "-c", flood, API_IP, "600", ns=bed.guest)
        try:
            assert proc.stdout is not None
            line = await asyncio.to_thread(proc.stdout.readline)
            assert int(line) > 0
            for i in range(20):
                res = bed.curl(f"https://api.test/n/{i}", "-w", "\n%{http_code}", ns=bed.guest2)
                assert res.stdout.rsplit("\n", 1)[1] == "200", res.stderr
            served = [r for r in bed.upstream_requests() if r["path"].startswith("/n/")]
            assert len(served) == 20 and all(_auth_of(r) == [f"Bearer {SECRET}"] for r in served)
        finally:
            proc.kill()
            proc.wait(5)


async def test_a_killed_interceptor_comes_back_with_its_rules_and_secrets(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        proc = bed.interceptor.proc
        assert proc is not None
        # haproxy runs under `ip netns exec`, which execs it: the pid is haproxy's
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        assert await bed.interceptor.ensure_running()
        res = bed.curl("https://api.test/after-restart")
        assert res.returncode == 0, res.stderr
        (seen,) = bed.upstream_requests()
        assert _auth_of(seen) == [f"Bearer {SECRET}"]
        assert SECRET not in json.dumps(bed.records)


async def test_an_interceptor_left_by_a_killed_agent_is_taken_over(tmp_path):
    """The agent dies (-9) and its haproxy lives on with the rules it had; the
    restarted agent's interceptor takes the listeners over (-sf): the old one
    exits, and only what the new agent pushes is served."""
    from netagent.intercept.control import Interceptor
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        old = bed.interceptor.proc
        assert old is not None
        await bed.interceptor.runtime.close()   # the dead agent's admin connection closed with it
        records: list = []
        again = Interceptor(bed.interceptor.s, bed.interceptor.ca, records.append, netns=bed.host)
        deny_all = RuleSet.parse([{"id": "now-denied", "domain": "api.test", "action": "deny"}])
        try:
            await again.start()
            await again.load("198.51.100.2", "sbx-1", deny_all, {})
            await asyncio.to_thread(old.wait, 10)     # the old one finished and left
            for i in range(5):
                res = bed.curl(f"https://api.test/v1/{i}", "-w", "\n%{http_code}")
                assert res.stdout.rsplit("\n", 1)[1] == "403", res.stdout
            assert bed.upstream_requests() == []
            await eventually(lambda: len(records) >= 5)
        finally:
            await again.stop()

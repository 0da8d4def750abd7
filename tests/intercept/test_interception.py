"""The request interceptor on real namespaces: a guest, the host with HAProxy
and the steering rule, an "internet" upstream with its own CA (tests/intercept/bed.py)."""
from __future__ import annotations

import json

from netagent.intercept.rules import RuleSet

from .bed import API_IP, OTHER_IP, eventually, intercept_bed, read_tree

SECRET = "sk-test-9f8e7d6c5b4a-never-in-clear"
RULES = RuleSet.parse([
    {"id": "no-admin", "domain": "api.test", "path": "/admin", "action": "deny"},
    {"id": "auth", "domain": "api.test", "path": "/",
     "transforms": [{"op": "set", "header": "Authorization", "value": "Bearer ${secret:API_KEY}"},
                    {"op": "remove", "header": "X-Debug"}]},
])


async def _ruled(bed) -> None:  # type: ignore[no-untyped-def]
    await bed.interceptor.load("198.51.100.2", "sbx-1", RULES, {"API_KEY": SECRET})
    bed.steer(API_IP, 443)


def _auth_of(request: dict) -> list[str]:
    return [v for k, v in request["headers"] if k.lower() == "authorization"]


async def test_injected_header_reaches_upstream_on_first_handshake_over_h2(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        res = bed.curl("https://api.test/v1/chat", "--http2", "-H", "X-Debug: 1", "-w", "\n%{http_version}")
        assert res.returncode == 0, res.stderr      # the first handshake for the name, no retry
        body, version = res.stdout.rsplit("\n", 1)
        assert version == "2"                      # ALPN h2 on the certificate made at rule time
        (seen,) = bed.upstream_requests()
        assert seen["sni"] == "api.test" and seen["path"] == "/v1/chat"
        assert _auth_of(seen) == [f"Bearer {SECRET}"]
        assert not [k for k, _ in seen["headers"] if k.lower() == "x-debug"]
        record = (await eventually(lambda: bed.records))[0]
        assert record["sandbox"] == "sbx-1" and record["method"] == "GET" and record["host"] == "api.test"
        assert record["path"] == "/v1/chat" and record["status"] == 200 and record["rule"] == "auth"
        assert record["transform"] == "yes" and record["bytes_in"] > 0 and record["bytes_out"] > 0
        assert SECRET not in json.dumps(bed.records)
        on_disk = read_tree(tmp_path / "state") + read_tree(tmp_path / "run")
        assert SECRET.encode() not in on_disk


async def test_deny_answers_403_json_naming_the_rule(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        res = bed.curl("https://api.test/admin/users", "-w", "\n%{http_code}")
        body, code = res.stdout.rsplit("\n", 1)
        assert code == "403"
        assert json.loads(body) == {"error": "denied by request rule", "rule": "no-admin", "sandbox": "sbx-1"}
        assert bed.upstream_requests() == []
        record = (await eventually(lambda: bed.records))[0]
        assert record["status"] == 403 and record["rule"] == "no-admin" and record["action"] == "deny"


async def test_guest_not_trusting_the_ca_gets_a_tls_error_and_nothing_is_sent(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        res = bed.curl("https://api.test/v1/x", ca=False)
        assert res.returncode == 60, res.stderr    # curl: peer certificate cannot be authenticated
        assert bed.upstream_requests() == []


async def test_host_other_than_the_tls_name_gets_no_secret(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        res = bed.curl("https://api.test/v1/x", "-H", "Host: other.test")
        assert res.returncode == 0, res.stderr
        (seen,) = bed.upstream_requests()
        assert seen["sni"] == "api.test" and _auth_of(seen) == []
        record = (await eventually(lambda: bed.records))[0]
        assert record["transform"] == "withheld"


async def test_redirect_to_another_domain_carries_no_secret(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        res = bed.curl("https://api.test/redirect", "-L", "-w", "\n%{http_code}")
        assert res.returncode == 0, res.stderr
        assert res.stdout.rsplit("\n", 1)[1] == "200"
        first, second = bed.upstream_requests()
        assert first["path"] == "/redirect" and _auth_of(first) == [f"Bearer {SECRET}"]
        assert second["sni"] == "other.test" and second["path"] == "/landed" and _auth_of(second) == []


async def test_upstream_not_proving_the_name_gets_nothing(tmp_path):
    """The upstream's certificate names api.test and other.test; a rule for a
    name it cannot prove (wrong.test, steered to the same address) gets 503."""
    async with intercept_bed(tmp_path) as bed:
        auth = {"op": "set", "header": "Authorization", "value": "${secret:API_KEY}"}
        rules = RuleSet.parse([{"id": "w", "domain": "wrong.test", "transforms": [auth]}])
        await bed.interceptor.load("198.51.100.2", "sbx-1", rules, {"API_KEY": SECRET})
        bed.steer(API_IP, 443)
        res = bed.curl("https://wrong.test/", "--resolve", f"wrong.test:443:{API_IP}", "-w", "\n%{http_code}")
        assert res.stdout.rsplit("\n", 1)[1] == "503"
        assert bed.upstream_requests() == []


async def test_name_without_rules_on_a_steered_address_is_refused(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        res = bed.curl("https://other.test/", "--resolve", f"other.test:443:{API_IP}", "-k", "-w", "\n%{http_code}")
        body, code = res.stdout.rsplit("\n", 1)
        assert code == "403" and json.loads(body)["reason"] == "name has no request rules on this port"
        assert bed.upstream_requests() == []


async def test_unsteered_flows_go_straight_to_the_upstream(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        res = bed.curl("https://other.test/direct")
        assert res.returncode == 0, res.stderr
        (seen,) = bed.upstream_requests()
        assert seen["sni"] == "other.test" and _auth_of(seen) == []
        assert bed.records == []
        assert OTHER_IP


async def test_upstream_connections_are_not_shared_across_names(tmp_path):
    """Two ruled names on one upstream address: each request reaches the
    upstream on a connection whose TLS name is its own (a kept connection
    verified for api.test never carries other.test's requests)."""
    async with intercept_bed(tmp_path) as bed:
        rules = RuleSet.parse([{"id": "a", "domain": "api.test"}, {"id": "o", "domain": "other.test"}])
        await bed.interceptor.load("198.51.100.2", "sbx-1", rules, {})
        bed.steer(API_IP, 443)
        # idle upstream connections of one name, then sessions of the other with
        # several requests each (http-reuse safe reuses idle connections for a
        # session's later requests)
        for first, second in (("other.test", "api.test"), ("api.test", "other.test")):
            for name in (first, second):
                urls = [f"https://{name}/n{i}" for i in range(3)]
                res = bed.curl(urls[0], *urls[1:], "--resolve", f"{name}:443:{API_IP}", "--http1.1")
                assert res.returncode == 0, res.stderr
        seen = bed.upstream_requests()
        assert len(seen) == 12
        assert all(r["sni"] == dict(r["headers"]).get("host", dict(r["headers"]).get("Host")) for r in seen), seen


WS_CLIENT = """
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection((sys.argv[2], 443), timeout=10), server_hostname="api.test")
s.sendall(b"GET /ws HTTP/1.1\\r\\nHost: api.test\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += s.recv(4096)
frame = bytes([0x81, 0x85, 1, 2, 3, 4]) + bytes(b ^ (1, 2, 3, 4)[i % 4] for i, b in enumerate(b"hello"))
s.sendall(frame)
echo = b""
while len(echo) < len(frame):
    echo += s.recv(4096)
print(head.split(b"\\r\\n")[0].decode(), echo == frame)
"""


async def test_websocket_passes_through_an_intercepted_name(tmp_path):
    async with intercept_bed(tmp_path) as bed:
        await _ruled(bed)
        from tests.testbed import sh
        res = sh.run(sh.PYTHON, "-c", WS_CLIENT, str(bed.combined_ca), API_IP, ns=bed.guest, check=False, timeout=30)
        assert res.stdout.strip() == "HTTP/1.1 101 Switching Protocols True", res.stdout + res.stderr
        (seen,) = bed.upstream_requests()
        assert seen["path"] == "/ws" and _auth_of(seen) == [f"Bearer {SECRET}"]

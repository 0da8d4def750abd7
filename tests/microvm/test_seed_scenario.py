"""The seed's scenario end to end, on both registry backends: a directory
listing served from a real microVM guest, reached by an internet client at
https://3000-<sandboxId>.<domain>/ over HTTP/2 through the HAProxy edge.

The agent runs as a daemon in the test bed's host netns; haproxy runs in the
internet netns (as a separate edge box would) and reaches the node through its
uplink address and the DNATed host port; `netagent edge` (the control plane)
programs it from the registry, the only thing edge and agent share. The client
is curl in the internet netns, with --resolve and the test CA.
"""
from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import WEB_IP
from tests.testbed.haproxy_proc import HAProxy
from tests.testbed.microvm.runner import make_runner
from tests.testbed.registry_read import read_record as registry_record
from tests.testbed.tls import wildcard_pem

pytestmark = pytest.mark.microvm
DOMAIN = "sbx.test"
HTTPS_PORT = 18443
TOKEN = "seed-private-token-0123"
LISTING_CGI = r"""#!/bin/sh
printf 'Content-Type: text/html\r\n\r\n'
echo "<html><body><h1>Directory listing for $REQUEST_URI</h1><ul>"
for f in /srv/share/*; do n=${f##*/}; echo "<li><a href=\"$n\">$n</a></li>"; done
echo "</ul></body></html>"
"""




def wait_port(url: str, sandbox_id: str, reachable: bool, timeout: float) -> float:
    """Seconds until the registry says `reachable` for guest port 3000."""
    start = time.monotonic()
    while True:
        rec = registry_record(url, sandbox_id)
        port = rec.port(3000) if rec else None
        if port is not None and port.reachable is reachable:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"registry still says {port} after {timeout}s"
        time.sleep(0.05)


def edge_get(bed, ca: Path, sandbox_id: str, accept: str = "application/json",
             headers: tuple[str, ...] = ()) -> dict:
    """curl over HTTPS with HTTP/2 from the internet netns: status, content type, HTTP version, body."""
    name = f"3000-{sandbox_id}.{DOMAIN}"
    extra = [arg for h in headers for arg in ("-H", h)]
    res = sh.run("curl", "-sS", "--http2", "--max-time", "5", "--cacert", str(ca),
                 "--resolve", f"{name}:{HTTPS_PORT}:{WEB_IP}", "-H", f"Accept: {accept}", *extra,
                 "-w", "\n%{http_code} %{http_version} %{content_type}", f"https://{name}:{HTTPS_PORT}/",
                 ns=bed.inet)
    body, _, meta = res.stdout.rpartition("\n")
    status, version, content_type = (meta.split(" ", 2) + [""])[:3]
    return {"status": int(status), "version": version, "content_type": content_type, "body": body}


def edge_until(bed, ca: Path, sandbox_id: str, status: int, timeout: float = 2.0,
               headers: tuple[str, ...] = ()) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = edge_get(bed, ca, sandbox_id, headers=headers)
        if answer["status"] == status or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_directory_listing_through_the_edge(bed, tmp_path, backend, request):
    if backend == "redis":
        url = request.getfixturevalue("redis_server").url
    else:
        url = f"sqlite://{tmp_path}/registry.db"
    daemon = Daemon(write_config(bed, tmp_path, pool_size=1, registry_url=url)).start()
    ca, pem = wildcard_pem(tmp_path / "pki", DOMAIN)
    haproxy = HAProxy.for_test(tmp_path / "edge", DOMAIN, https_listen=(f"{WEB_IP}:{HTTPS_PORT}",),
                               http_listen=(f"{WEB_IP}:18080",), tls_pem=str(pem), https_public_port=HTTPS_PORT)
    haproxy.start(netns=bed.inet)
    edge = subprocess.Popen([sh.PYTHON, "-m", "netagent", "edge", "--registry", url, "--domain", DOMAIN,
                             "--haproxy-socket", haproxy.settings.admin_socket, "--map-dir", haproxy.settings.map_dir,
                             "--shards", str(haproxy.settings.shards)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    bed.procs.append(edge)
    vm = None
    try:
        with daemon.client() as c:
            sid = "seed-web-1"
            sbx = c.allocate(sid)
            n = sbx.network
            vm = make_runner(netns=n.netns, tap=n.tap, guest_mac=n.guest_mac, boot_ip_arg=n.boot_ip_arg)
            vm.start()

            # 1. An HTTP server on port 3000 in the guest serving a directory listing.
            cgi = base64.b64encode(LISTING_CGI.encode()).decode()
            setup = ("mkdir -p /srv/share/cgi-bin && echo hello > /srv/share/hello.txt && "
                     "echo notes > /srv/share/notes.md && "
                     f"echo {cgi} | base64 -d > /srv/share/cgi-bin/index.cgi && "
                     "chmod +x /srv/share/cgi-bin/index.cgi && httpd -p 3000 -h /srv/share")
            assert vm.run(setup).exit_code == 0

            # 2. Expose 3000 and wait for the registry to say reachable.
            host_port = c.expose(sid, 3000).host_port
            wait_port(url, sid, True, timeout=5)
            rec = registry_record(url, sid)
            assert rec is not None and rec.port(3000).host_port == host_port
            assert rec.node_address == "198.51.100.2" and rec.node_id == "test-node"

            # 3. From the internet netns, through the edge over HTTPS and HTTP/2: 200 with the listing.
            answer = edge_until(bed, ca, sid, 200)
            answer = edge_get(bed, ca, sid, accept="text/html")
            assert (answer["status"], answer["version"]) == (200, "2"), answer
            assert "Directory listing for /" in answer["body"]
            assert "hello.txt" in answer["body"] and "notes.md" in answer["body"]

            # 4. Stop the server: unreachable within 2 s, and the edge answers 502 JSON.
            assert vm.run("killall httpd").exit_code == 0
            took = wait_port(url, sid, False, timeout=2.0)
            answer = edge_until(bed, ca, sid, 502)
            assert answer["status"] == 502 and answer["content_type"].startswith("application/json"), answer
            body = json.loads(answer["body"])
            assert body["sandboxId"] == sid and body["port"] == 3000 and body["message"], body
            print(f"{backend}: unreachable in the registry {took:.2f}s after the server stopped")

            # 5. A private port: 401 without its token, 200 with it.
            assert vm.run("httpd -p 3000 -h /srv/share").exit_code == 0
            c.expose(sid, 3000, public=False, access_token=TOKEN)
            wait_port(url, sid, True, timeout=5)
            answer = edge_until(bed, ca, sid, 401)
            assert answer["status"] == 401 and json.loads(answer["body"])["message"], answer
            answer = edge_until(bed, ca, sid, 200, headers=(f"X-Access-Token: {TOKEN}",))
            assert answer["status"] == 200 and "hello.txt" in answer["body"], answer

            # 6. Release: the edge answers 404.
            assert c.release(sid)
            answer = edge_until(bed, ca, sid, 404)
            assert answer["status"] == 404, answer
            assert registry_record(url, sid) is None
    finally:
        if vm is not None:
            vm.stop()
        edge.terminate()
        try:
            assert edge.wait(10) == 0, edge.stderr.read() if edge.stderr else ""
        finally:
            haproxy.stop()
            daemon.stop()

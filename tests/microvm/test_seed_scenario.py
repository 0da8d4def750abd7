"""The seed's scenario end to end, on both registry backends: a directory
listing served from a real microVM guest, reached by an internet client at
http://3000-<sandboxId>.<domain>/ through the reference edge.

The agent runs as a daemon in the test bed's host netns; the edge runs in the
internet netns (as a separate edge box would) and reaches the node through its
uplink address and the DNATed host port; the registry is the only thing they share.
"""
from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest

from tests.service.daemon import Daemon, write_config
from tests.testbed import sh
from tests.testbed.bed import WEB_IP
from tests.testbed.microvm.runner import make_runner
from tests.testbed.registry_read import read_record as registry_record

pytestmark = pytest.mark.microvm
DOMAIN = "sbx.test"
EDGE = f"{WEB_IP}:18080"   # the edge listens in the internet netns

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


def edge_get(bed, sandbox_id: str, accept: str = "application/json") -> dict:
    res = sh.run(sh.PYTHON, "-m", "tests.testbed.http_get", EDGE, "/", "--host", f"3000-{sandbox_id}.{DOMAIN}",
                 "--accept", accept, ns=bed.inet)
    return json.loads(res.stdout)


def edge_until(bed, sandbox_id: str, status: int, timeout: float = 2.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = edge_get(bed, sandbox_id)
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
    edge = subprocess.Popen(["ip", "netns", "exec", bed.inet, sh.PYTHON, "-m", "netagent", "edge",
                             "--registry", url, "--domain", DOMAIN, "--listen", EDGE],
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

            # 3. From the internet netns, through the edge: 200 with the listing.
            answer = edge_get(bed, sid, accept="text/html")
            assert answer["status"] == 200, answer
            assert "Directory listing for /" in answer["body"]
            assert "hello.txt" in answer["body"] and "notes.md" in answer["body"]

            # 4. Stop the server: unreachable within 2 s, and the edge answers 502 JSON.
            assert vm.run("killall httpd").exit_code == 0
            took = wait_port(url, sid, False, timeout=2.0)
            answer = edge_until(bed, sid, 502)
            assert answer["status"] == 502 and answer["content_type"].startswith("application/json"), answer
            body = json.loads(answer["body"])
            assert body["sandboxId"] == sid and body["port"] == 3000 and body["message"], body
            print(f"{backend}: unreachable in the registry {took:.2f}s after the server stopped")

            # 5. Release: the edge answers 404.
            assert c.release(sid)
            answer = edge_until(bed, sid, 404)
            assert answer["status"] == 404, answer
            assert registry_record(url, sid) is None
    finally:
        if vm is not None:
            vm.stop()
        edge.terminate()
        try:
            assert edge.wait(10) == 0, edge.stderr.read() if edge.stderr else ""
        finally:
            daemon.stop()

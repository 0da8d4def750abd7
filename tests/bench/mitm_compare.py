"""The candidate not chosen, measured once (docs/architecture.md, "Why HAProxy"):
mitmproxy in transparent mode with an addon that sets the header, in the same
interception bed and with the same clients as tests/bench/intercept_bench.py.
Not part of `make bench` (mitmproxy is not a dependency):

    python3 -m venv /tmp/mvenv && /tmp/mvenv/bin/pip install mitmproxy
    MITMDUMP=/tmp/mvenv/bin/mitmdump .venv/bin/python -m tests.bench.mitm_compare
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests.bench.intercept_bench import PAIRED_CLIENT, PLAIN, PORT, UPSTREAM_CFG
from tests.intercept.bed import API_IP, GUEST_IP, OTHER_IP, intercept_bed
from tests.testbed import sh

MITM_PORT = 16443
ADDON = """
from mitmproxy import http
def request(flow: http.HTTPFlow) -> None:
    if flow.request.pretty_host == "api.test":
        flow.request.headers["Authorization"] = "Bearer bench-secret-value"
"""


def _h2load(ns: str) -> tuple[float, int]:
    r = sh.run("h2load", "-n", "5000", "-c", "16", "-m", "16", "--connect-to", f"{API_IP}:{PORT}",
               f"https://api.test:{PORT}/v1/x", ns=ns, timeout=600)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", r.stdout)
    ok = re.search(r"(\d+) succeeded", r.stdout)
    assert rate and ok, r.stdout[-500:]
    return float(rate.group(1)), int(ok.group(1))


async def run() -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        async with intercept_bed(tmp) as bed:
            up = tmp / "upstream"
            (up / "up.pem").write_text((up / "upstream.crt").read_text() + (up / "upstream.key").read_text())
            (up / "up.cfg").write_text(UPSTREAM_CFG.format(port=PORT, plain=PLAIN, pem=up / "up.pem"))
            (tmp / "addon.py").write_text(ADDON)
            conf = tmp / "mitm"
            conf.mkdir()
            upstream = subprocess.Popen(["ip", "netns", "exec", bed.inet, "haproxy", "-db", "-f", str(up / "up.cfg")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            mitm = subprocess.Popen(["ip", "netns", "exec", bed.host, os.environ.get("MITMDUMP", "mitmdump"),
                                     "--mode", "transparent", "--listen-port", str(MITM_PORT), "-q",
                                     "--set", f"confdir={conf}",
                                     "--set", f"ssl_verify_upstream_trusted_ca={bed.upstream_ca}",
                                     "-s", str(tmp / "addon.py")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 30
                while not (conf / "mitmproxy-ca-cert.pem").exists() and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(2)   # its listener comes up after the CA is written
                sh.run("nft", f"add element inet natest intercept_steer {{ {GUEST_IP} . {API_IP} . {PORT} : "
                       f"{MITM_PORT} }}", ns=bed.host)
                trust = tmp / "trust.pem"
                trust.write_text((conf / "mitmproxy-ca-cert.pem").read_text() + bed.upstream_ca.read_text())
                load_before = os.getloadavg()[0]
                res = sh.run(sh.PYTHON, "-c", PAIRED_CLIENT, str(trust), "1000", API_IP, OTHER_IP, str(PORT),
                             ns=bed.guest, timeout=600)
                times = json.loads(res.stdout)
                diffs = [a - b for a, b in zip(times["intercepted"], times["direct"], strict=True)]
                rates = [_h2load(bed.guest) for _ in range(3)]
                return {"candidate": "mitmproxy transparent + addon",
                        "added_p50_ms": round(statistics.median(diffs) * 1000, 3),
                        "intercepted_p50_ms": round(statistics.median(times["intercepted"]) * 1000, 3),
                        "direct_p50_ms": round(statistics.median(times["direct"]) * 1000, 3),
                        "h2load_req_per_s_and_succeeded": rates,
                        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}}
            finally:
                for proc in (mitm, upstream):
                    proc.kill()
                    proc.wait(5)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run()), indent=2))

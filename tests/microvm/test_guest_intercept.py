"""Request interception from a real guest kernel (issue 23, "done when"): a QEMU
guest with the host CA installed calls https://api.test/ with curl, which
verifies the certificate (no -k, no legacy_guest_tls); the upstream in the
internet netns receives the injected Authorization header; the guest's
filesystem, the agent's log, the events, the state dir (state.db, the
registry, the request log), and the interceptor's run dir hold nothing of the
value.

The same guest, before the CA is installed (its trust store holds only the
upstream's CA, standing in for the public roots), gets a certificate error and
the upstream receives nothing. It also speaks HTTP/2 to the interceptor, and a
name without rules (other.test) is not intercepted: curl verifies the
upstream's own certificate against the upstream CA alone."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import grpc
import pytest

from netagent.api import netagent_pb2 as pb
from tests.intercept.bed import read_tree
from tests.microvm.test_e2e import boot
from tests.service.daemon import Daemon, write_config
from tests.testbed import sh, tls
from tests.testbed.bed import WEB2_IP
from tests.testbed.microvm.hostbins import GUEST_TRUST_STORE

pytestmark = pytest.mark.microvm

API_IP = "203.0.113.13"    # api.test in tests/testbed/dns_server.py
OTHER_IP = WEB2_IP         # other.test, already on the internet netns's lo
SECRET = "sk-vm-77aa88bb99cc-never-in-the-guest"
UPSTREAM_CA_IN_GUEST = "/etc/ssl/upstream-ca.pem"
CURL_SECONDS = 60          # curl's ECDHE and certificate checks in software under TCG


class EventLog:
    """Every event WatchEvents streams (all sandboxes, from cursor 0) while the test runs."""

    def __init__(self, client):
        self.events: list[pb.Event] = []
        self._cond = threading.Condition()
        self._stream = client.watch_events(0, timeout=900)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for ev in self._stream:
                with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise

    def http_requests(self, count: int, timeout: float = 30) -> list[pb.HttpRequestRecord]:
        """The first `count` HTTP_REQUEST records, once that many arrived."""
        def found() -> list[pb.HttpRequestRecord]:
            return [e.request for e in self.events if e.type == pb.EVENT_TYPE_HTTP_REQUEST]
        with self._cond:
            assert self._cond.wait_for(lambda: len(found()) >= count, timeout), found()
            return found()

    def close(self) -> bytes:
        self._stream.cancel()
        self._thread.join(10)
        return b"".join(e.SerializeToString() for e in self.events)


def start_upstream(bed, d: Path, address: str, name: str) -> Path:
    """An echo upstream for `name` on address:443, its certificate from d's CA; returns its request log."""
    sh.ip("addr", "replace", f"{address}/32", "dev", "lo", ns=bed.inet)
    crt, key = tls.issue(d, name.split(".")[0], f"DNS:{name}")
    log = d / f"{name}.jsonl"
    bed.start_module(bed.inet, "tests.testbed.echo_upstream", address, str(crt), str(key), str(log))
    return log


def seen(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def auth_of(request: dict) -> list[str]:
    return [v for k, v in request["headers"] if k.lower() == "authorization"]


def curl(vm, *args: str):
    """curl in the guest: body, then the write-out line "<code> <http version>"; stderr kept."""
    cmd = " ".join(["curl", "-sS", "--max-time", str(CURL_SECONDS), "-w", "'\\n%{http_code} %{http_version}'",
                    *args, "2>&1"])
    return vm.run(cmd, timeout=CURL_SECONDS + 30)


def put_file(vm, path: str, text: str) -> None:
    res = vm.run(f"mkdir -p $(dirname {path}) && cat > {path} <<'__PEM__'\n{text}__PEM__\n", timeout=30)
    assert res.exit_code == 0, res.output


def guest_files_holding(vm, needle: str) -> list[str]:
    """Files under the guest's / (not /proc, /sys, /dev) holding `needle`. The command
    carries it in two halves, so the script the guest runs (/tmp/cmd.sh) does not hold it."""
    a, b = needle[:len(needle) // 2], needle[len(needle) // 2:]
    script = (f"a='{a}'; b='{b}'; for d in /*; do case $d in /proc|/sys|/dev) continue ;; esac; "
              'grep -rlF -e "$a$b" "$d"; done; echo __scanned__')
    res = vm.run(script, timeout=180)
    lines = res.output.split()
    assert lines and lines[-1] == "__scanned__", res.output
    return lines[:-1]


def registry_bytes(client) -> bytes:
    url = client.host_info().registry
    assert url.startswith("sqlite:///"), url     # the default registry backend: a file in the state dir
    path = Path(url.removeprefix("sqlite://"))
    return b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def test_a_guest_with_the_host_ca_calls_api_test_and_only_the_upstream_sees_the_secret(bed, tmp_path):
    started = time.monotonic()
    up = tmp_path / "upstream"
    up.mkdir()
    upstream_ca = tls.make_ca(up, "upstream-ca")
    api_log = start_upstream(bed, up, API_IP, "api.test")
    other_log = start_upstream(bed, up, OTHER_IP, "other.test")
    cfg = write_config(bed, tmp_path, pool_size=0, intercept={
        "run_dir": str(tmp_path / "intercept-run"), "ca_bundle": str(upstream_ca)})
    daemon = Daemon(cfg).start()
    vm = events = None
    outputs: list[str] = []
    try:
        with daemon.client() as c:
            events = EventLog(c)
            c.set_secret("ic-vm", "API_KEY", SECRET)
            sbx = c.allocate("ic-vm", request_rules=[{"id": "auth", "domain": "api.test", "transforms": [
                {"op": "set", "header": "Authorization", "value": "Bearer ${secret:API_KEY}"}]}])
            vm = boot(sbx)
            # The guest trusts the public roots (here: the upstream's CA) but not yet the host CA.
            put_file(vm, GUEST_TRUST_STORE, upstream_ca.read_text())
            put_file(vm, UPSTREAM_CA_IN_GUEST, upstream_ca.read_text())

            # Attack case: no host CA in the trust store -> a verification error, nothing upstream.
            res = curl(vm, "https://api.test/quiet/no-ca")
            outputs.append(res.output)
            assert res.exit_code == 60 and "SSL certificate problem" in res.output, res.output
            assert seen(api_log) == []

            # The orchestrator installs the host CA, fetched through the API (GetInterceptCA).
            host_ca = c.intercept_ca()
            assert "BEGIN CERTIFICATE" in host_ca
            put_file(vm, GUEST_TRUST_STORE, upstream_ca.read_text() + host_ca)

            res = curl(vm, "--http1.1", "https://api.test/quiet/v1")   # verified, default trust store
            outputs.append(res.output)
            assert res.exit_code == 0 and res.output.split() == ["ok", "200", "1.1"], res.output
            res = curl(vm, "--http2", "https://api.test/quiet/h2")
            outputs.append(res.output)
            assert res.exit_code == 0 and res.output.split() == ["ok", "200", "2"], res.output
            first, second = seen(api_log)         # the no-CA attempt never reached the upstream
            assert [(r["sni"], r["path"]) for r in (first, second)] == [
                ("api.test", "/quiet/v1"), ("api.test", "/quiet/h2")]
            assert auth_of(first) == auth_of(second) == [f"Bearer {SECRET}"]

            # A name without rules is not intercepted: the upstream's own certificate verifies
            # against its CA alone, and the request arrives as the guest sent it.
            res = curl(vm, "--http1.1", "--cacert", UPSTREAM_CA_IN_GUEST, "-H", "'X-From-Guest: 1'", "https://other.test/plain")
            outputs.append(res.output)
            assert res.exit_code == 0 and res.output.split()[-2:] == ["200", "1.1"], res.output
            (plain,) = seen(other_log)
            assert plain["sni"] == "other.test" and auth_of(plain) == []
            assert ("X-From-Guest", "1") in [tuple(h) for h in plain["headers"]]

            records = events.http_requests(2)
            assert [(r.host, r.path, r.status, r.rule, r.transform) for r in records] == [
                ("api.test", "/quiet/v1", 200, "auth", "yes"), ("api.test", "/quiet/h2", 200, "auth", "yes")]

            # Nothing but the upstream holds the value.
            # (the scan finds what is there: the two trust files hold a PEM)
            assert {GUEST_TRUST_STORE, UPSTREAM_CA_IN_GUEST} <= set(guest_files_holding(vm, "BEGIN CERTIFICATE"))
            assert guest_files_holding(vm, SECRET) == []
            assert not any(SECRET in out for out in outputs)
            registry = registry_bytes(c)
            assert b"ic-vm" in registry and SECRET.encode() not in registry
        assert SECRET.encode() not in events.close()
        state = read_tree(tmp_path / "state")
        assert b"/quiet/v1" in (tmp_path / "state" / "requests.jsonl").read_bytes()
        assert SECRET.encode() not in state + read_tree(tmp_path / "intercept-run")
        assert SECRET not in "".join(daemon.log)
        print(f"guest interception test: {time.monotonic() - started:.1f} s (boot {vm.boot_seconds:.1f} s)")
    finally:
        if events is not None:
            events.close()
        if vm is not None:
            vm.stop()
        daemon.stop()

"""The operator CLI's reachability and registry commands against a daemon in the
test bed: probe, status's registry lines, show's registry record and drift,
doctor's registry checks; capture --filter."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from netagent.registry import NodeRecord, SandboxRecord, open_registry
from netagent.registry.ownership import Verdict
from tests.service.daemon import Daemon, write_config
from tests.service.test_cli_debug import network
from tests.testbed import sh
from tests.testbed.bed import UPLINK_IP, LightGuest, wait_until

HIGH_SEQ = 2**52   # above any seq the agent writes (microseconds since the epoch), so it never overwrites it


def cli(config: Path, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    res = sh.run(sh.PYTHON, "-m", "netagent", *args, "--config", str(config), check=False, timeout=timeout)
    return res.returncode, res.stdout, res.stderr


def cli_json(config: Path, *args: str, expect: int = 0) -> Any:
    code, out, err = cli(config, *args, "--json")
    assert code == expect, f"{args}: exit {code}\n{out}\n{err}"
    return json.loads(out)


def started(bed, tmp_path: Path, **over: Any) -> Daemon:
    return Daemon(write_config(bed, tmp_path, **over)).start()


@pytest.fixture
def quiet_daemon(bed, tmp_path):
    """A daemon that rewrites registry records only on changes (heartbeat 60 s),
    so a test can alter the registry and read it before the agent repairs it."""
    d = started(bed, tmp_path, registry_heartbeat_s=60, registry_ttl_s=600)
    try:
        yield d
    finally:
        d.stop()


def port_state(config: Path, sandbox: str, guest_port: int) -> dict[str, Any]:
    """The agent's view of one exposed port (show exits 1 on drift, still with JSON)."""
    code, out, err = cli(config, "show", sandbox, "--json")
    assert code in (0, 1), err
    return next(p for p in json.loads(out)["ports"] if p["guestPort"] == guest_port)


def field(out: str, label: str) -> str:
    """The value of one `label  value` line of human output."""
    return next(line[len(label):].strip() for line in out.splitlines() if line.startswith(label + " "))


def put_record(db: Path, record: SandboxRecord, claim: bool = False) -> bool:
    """`claim`: written as another node taking the sandbox over (docs/registry.md, moves);
    that node heartbeats once, so its (v2) record is served."""
    async def put() -> bool:
        reg = open_registry(f"sqlite://{db}")
        try:
            await reg.refresh(NodeRecord(record.node_id, record.node_address, time.time()), [], 600)
            return await reg.write_sandbox(record, 600, claim) == Verdict.STORED
        finally:
            await reg.close()
    return asyncio.run(put())


def delete_record(db: Path, sandbox: str) -> None:
    import sqlite3
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM sandboxes WHERE sandbox_id = ?", (sandbox,))


def test_probe_open_closed_unexposed_unknown_and_capture_filter(bed, daemon):
    cfg = daemon.config
    assert cli(cfg, "allocate", "web-1")[0] == 0
    guest = LightGuest.attach(bed, network(daemon, "web-1"), "p")
    bed.start_server(guest.name, "--http", "3000")
    host_port = cli_json(cfg, "expose", "web-1", "3000")["hostPort"]
    assert wait_until(lambda: port_state(cfg, "web-1", 3000).get("reachable") is True, 10)
    code, out, _ = cli(cfg, "ls", "--rates-interval", "0")
    assert code == 0 and f"3000->{host_port}(up)" in out, out

    code, out, _ = cli(cfg, "probe", "web-1", "3000")
    assert code == 0, out
    first, view = out.splitlines()[:2]
    assert first.startswith("web-1 port 3000: open (SYN-ACK in ") and first.endswith(
        f" ms), exposed on host port {host_port}"), out
    assert view.startswith("registry view: reachable since ") and "last checked" in view, out
    res = cli_json(cfg, "probe", "web-1", "3000", "--timeout-ms", "800")
    assert (res["outcome"], res["reachable"], res["hostPort"], res["timeoutMs"]) == ("syn-ack", True, host_port, 800)
    assert res["view"]["reachable"] is True and res["rttMs"] >= 0

    # Closed and not exposed: the guest's kernel answers RST.
    code, out, _ = cli(cfg, "probe", "web-1", "3001")
    assert code == 1, out
    assert out.splitlines()[0].startswith("web-1 port 3001: closed (RST in "), out
    assert out.splitlines()[0].endswith("nothing listens on 3001 in the guest"), out
    assert out.splitlines()[1] == "not exposed (`netagent expose web-1 3001` maps it to a host port)"
    assert cli_json(cfg, "probe", "web-1", "3001", expect=1)["hostPort"] == 0

    # Nobody attached to the tap: no answer.
    assert cli(cfg, "allocate", "idle-1")[0] == 0
    code, out, _ = cli(cfg, "probe", "idle-1", "80", "--timeout-ms", "300")
    assert code == 1 and out.startswith(
        "idle-1 port 80: no answer within 300 ms: the guest is down, firewalled, or not attached"), out

    code, _, err = cli(cfg, "probe", "nobody", "80")
    assert code == 3 and "not allocated" in err
    assert cli(cfg, "probe", "web-1", "0")[0] == 2
    assert cli(cfg, "probe", "web-1", "80", "--timeout-ms", "0")[0] == 2

    # capture --filter (BPF compiled by tcpdump): the prober's SYNs to 3000 pass, probes of 3001 do not.
    proc = sh.popen(sh.PYTHON, "-m", "netagent", "capture", "web-1", "--count", "4", "--filter", "tcp port 3000",
                    "--timeout", "30", "--json", "--config", str(cfg))
    try:
        for _ in range(3):
            cli(cfg, "probe", "web-1", "3001")
        out, err = proc.communicate(timeout=40)
    finally:
        proc.kill()
        proc.wait(5)
    assert proc.returncode == 0, err
    captured = json.loads(out)
    assert captured["count"] == 4, captured
    assert all(":3000 " in p["summary"] or p["summary"].endswith(":3000") or ":3000 >" in p["summary"]
               for p in captured["packets"]), captured
    assert not any(":3001" in p["summary"] for p in captured["packets"]), captured


def test_status_and_show_flag_registry_drift(bed, quiet_daemon, tmp_path):
    cfg = quiet_daemon.config
    db = tmp_path / "state" / "registry.db"
    info = cli_json(cfg, "status")
    assert info["registry"] == f"sqlite://{db}" and info["registryHealthy"] is True, info
    assert info["nodeAddress"] == UPLINK_IP and info["registryError"] == ""
    code, out, _ = cli(cfg, "status")
    assert code == 0 and field(out, "registry") == f"sqlite://{db}", out
    assert field(out, "registryHealth").startswith("healthy (last successful write "), out
    assert field(out, "probedPorts") == "0" and field(out, "nodeAddress") == UPLINK_IP, out

    assert cli(cfg, "allocate", "reg-1")[0] == 0
    host_port = cli_json(cfg, "expose", "reg-1", "3000")["hostPort"]
    # No guest: the port settles as not reachable, and the registry says the same.
    assert wait_until(lambda: port_state(cfg, "reg-1", 3000).get("reachable") is False, 10)
    assert wait_until(lambda: cli(cfg, "show", "reg-1")[0] == 0, 10)
    code, out, _ = cli(cfg, "show", "reg-1")
    assert f"tcp/3000 -> {host_port} NOT reachable (changed " in out, out
    assert f"registry record (sqlite://{db}):" in out and "node     test-node at 198.51.100.2" in out, out
    assert "registry drift: none (the registry matches the agent)" in out, out
    shown = cli_json(cfg, "show", "reg-1")
    record = SandboxRecord.from_json(json.dumps(shown["registry"]["record"]))
    assert shown["registry"]["state"] == "ok" and shown["registryDrift"] == []
    assert record.port(3000).host_port == host_port

    # Another node takes it over: another host port, reachable, another node.
    port = dataclasses.replace(record.port(3000), host_port=host_port + 1, reachable=True)
    assert put_record(db, dataclasses.replace(record, seq=HIGH_SEQ, node_id="other-node", ports=(port,)), claim=True)
    code, out, _ = cli(cfg, "show", "reg-1")
    assert code == 1 and "REGISTRY DRIFT:" in out, out
    assert "node_id 'other-node' in the registry, 'test-node' here" in out
    assert f"host_port {host_port + 1} in the registry, {host_port} in the agent" in out
    assert "reachable true in the registry, false in the agent" in out
    drift = cli_json(cfg, "show", "reg-1", expect=1)["registryDrift"]
    assert {d["object"] for d in drift} == {"registry record", "registry port tcp/3000"}, drift

    # The record disappears.
    delete_record(db, "reg-1")
    code, out, _ = cli(cfg, "show", "reg-1")
    assert code == 1 and "registry record (sqlite://" in out and "(none)" in out, out
    assert "missing (absent, expired or a tombstone)" in out, out
    # ...and the kernel side is still clean: only the registry drifted.
    assert "drift: none (kernel matches the agent)" in out


def test_doctor_registry_reachable_and_unreachable(bed, daemon, tmp_path):
    checks = {c["check"]: c for c in cli_json(daemon.config, "doctor")}
    assert checks["registry"]["status"] == "ok", checks["registry"]
    assert "answers (connect + read in" in checks["registry"]["detail"]
    assert "node 'test-node' heartbeat" in checks["registry"]["detail"]
    skew = checks["registry clock skew"]
    assert skew["status"] == "ok" and "runs on this host's clock" in skew["detail"], skew

    # A config for this doctor run only: a Redis socket that does not exist.
    (tmp_path / "d").mkdir()
    missing = tmp_path / "d" / "no-redis.sock"
    bad = write_config(bed, tmp_path / "d", registry_url=f"unix://{missing}")
    started_at = time.monotonic()
    code, out, _ = cli(bad, "doctor", "--json")
    assert code == 1 and time.monotonic() - started_at < 20
    reg = next(c for c in json.loads(out) if c["check"] == "registry")
    assert reg["status"] == "fail" and str(missing) in reg["detail"], reg
    assert f"redis-cli -s {missing} ping" in reg["fix"], reg
    assert not any(c["check"] == "registry clock skew" for c in json.loads(out))
    code, out, _ = cli(bad, "doctor")
    assert code == 1 and "registry" in out and "fail" in out


def test_registry_off(bed, tmp_path):
    d = started(bed, tmp_path, registry_url="")
    try:
        cfg = d.config
        info = cli_json(cfg, "status")
        assert info["registry"] == "" and field(cli(cfg, "status")[1], "registry") == "off"
        assert cli(cfg, "allocate", "off-1")[0] == 0
        assert cli(cfg, "expose", "off-1", "3000")[0] == 0
        code, out, _ = cli(cfg, "show", "off-1")
        assert code == 0 and "registry: off (registry_url is empty: nothing is published)" in out, out
        assert cli_json(cfg, "show", "off-1")["registry"]["state"] == "off"
        code, out, _ = cli(cfg, "probe", "off-1", "3000", "--timeout-ms", "200")
        assert code == 1 and "agent's view (registry off)" in out, out
        reg = next(c for c in cli_json(cfg, "doctor") if c["check"] == "registry")
        assert reg["status"] == "ok" and reg["detail"].startswith("off"), reg
    finally:
        d.stop()


def test_redis_registry_up_and_down(bed, tmp_path, redis_server):
    d = started(bed, tmp_path, registry_url=redis_server.url)
    try:
        cfg = d.config
        assert wait_until(lambda: cli_json(cfg, "status")["registryHealthy"], 10)
        assert cli(cfg, "allocate", "r-1")[0] == 0
        assert cli(cfg, "expose", "r-1", "3000")[0] == 0
        assert wait_until(lambda: cli(cfg, "show", "r-1")[0] == 0, 10)
        code, out, _ = cli(cfg, "show", "r-1")
        assert f"registry record ({redis_server.url}):" in out and "registry drift: none" in out, out
        checks = {c["check"]: c for c in cli_json(cfg, "doctor")}
        assert checks["registry"]["status"] == "ok", checks
        assert "the Redis server's clock" in checks["registry clock skew"]["detail"]
        assert checks["registry clock skew"]["status"] == "ok", checks

        redis_server.kill()
        code, out, _ = cli(cfg, "show", "r-1")
        assert code == 1 and f"registry: UNREACHABLE ({redis_server.url}):" in out, out
        assert wait_until(lambda: not cli_json(cfg, "status")["registryHealthy"], 10)
        assert field(cli(cfg, "status")[1], "registryHealth").startswith("ERROR: ")
        reg = next(c for c in cli_json(cfg, "doctor", expect=1) if c["check"] == "registry")
        assert reg["status"] == "fail" and "redis-cli -s" in reg["fix"], reg
    finally:
        d.stop()


def test_drift_and_skew_words():
    """The pure parts: every kind of registry drift, and the clock-skew thresholds (no root needed)."""
    from netagent.operator import registrycheck as rc
    from netagent.registry import PortRecord
    agent = {"ports": [{"guestPort": 3000, "protocol": "PROTOCOL_TCP", "hostPort": 20000, "reachable": True},
                       {"guestPort": 53, "protocol": "PROTOCOL_UDP", "hostPort": 20001}]}
    ports = (PortRecord(3000, "tcp", 20000, True, 1.0, 2.0), PortRecord(53, "udp", 20001, None, 0.0, 0.0))
    same = SandboxRecord("s", "n", "198.51.100.2", 1, 2.0, ports)
    assert rc.drift(agent, same, "n", "198.51.100.2") == []
    assert rc.drift(agent, None, "n", "")[0]["problem"].startswith("missing")
    moved = SandboxRecord("s", "m", "10.0.0.9", 2, 2.0, (PortRecord(3000, "tcp", 20005, False, 1.0, 2.0),
                                                        PortRecord(8080, "tcp", 20009, None, 0.0, 0.0)))
    problems = {(d["object"], d["problem"]) for d in rc.drift(agent, moved, "n", "198.51.100.2")}
    assert problems == {
        ("registry record", "node_id 'm' in the registry, 'n' here"),
        ("registry record", "node_address '10.0.0.9' in the registry, '198.51.100.2' here"),
        ("registry port tcp/3000", "host_port 20005 in the registry, 20000 in the agent"),
        ("registry port tcp/3000", "reachable false in the registry, true in the agent"),
        ("registry port udp/53", "missing in the registry (exposed in the agent)"),
        ("registry port tcp/8080", "in the registry (host port 20009), not exposed in the agent"),
    }
    url = "redis://r:6379/0"
    assert rc.skew_check(url, 0.3, 0.001)[1] == "ok"
    assert rc.skew_check(url, -1.5, 0.001)[1] == "warn"
    warn = rc.skew_check(url, 1.2, 0.3)   # within the measurement's uncertainty of 1 s: not more than 1 s for sure
    assert warn[1] == "ok", warn
    fail = rc.skew_check(url, 6.0, 0.01)
    assert fail[1] == "fail" and "NTP" in fail[3] and "seq" in fail[3] and "TTL" in fail[3], fail
    assert rc.skew_check("sqlite:///x.db", 99.0, 0.0)[1] == "ok"

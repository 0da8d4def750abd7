"""docs/operations.md, "A first host", followed in a scratch root and the test
bed's namespaces: `make install`, the installed example config (the bed's
values as NETAGENT_* overrides), the agent from the installed venv, the edge's
two units' own command lines (read from the installed unit files, with
/etc/netagent-edge/edge.env as installed) and a wildcard certificate, then a
sandbox allocated and exposed with the installed CLI, and `curl` over HTTPS
from the "internet" prints the guest's answer."""
from __future__ import annotations

import json
import re
import resource
import shlex
import subprocess
from pathlib import Path

import pytest

from netagent.client import Client
from tests.ops.installed import CLEAN_ENV, installed, make, venv_python
from tests.service.daemon import Daemon
from tests.testbed import sh
from tests.testbed.bed import DNS_IP, UPLINK_IP, LightGuest, wait_until
from tests.testbed.tls import wildcard_pem

pytestmark = pytest.mark.slow
GUEST_PORT = 3000


def unit_commands(unit: Path, key: str) -> list[str]:
    """Every `key=` line of a unit file, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", unit.read_text())
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def expand(command: str, env: dict[str, str], paths: dict[str, str]) -> list[str]:
    """systemd's expansion (${VAR}: one word, $VAR: split on spaces), then the
    unit's absolute paths moved into the scratch root."""
    command = re.sub(r"\$\{(\w+)\}", lambda m: shlex.quote(env[m.group(1)]), command)
    command = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], command)
    args = shlex.split(command)
    for old, new in paths.items():
        args = [a.replace(old, new) for a in args]
    return args


def netns_exec(ns: str, args: list[str], root: Path, cwd: Path) -> list[str]:
    """`ip netns exec`; the installed `netagent` script run by the venv's python
    (its #! names /opt/netagent, which is in the scratch root here)."""
    if args[0].endswith("/.venv/bin/netagent"):
        args = [str(venv_python(root)), *args]
    return ["ip", "netns", "exec", ns, *args]


def test_a_first_host_from_the_runbook_serves_a_guest_over_https(bed, tmp_path):
    root = tmp_path / "root"
    make("install", root)
    etc = root / "etc"
    ca, pem = wildcard_pem(tmp_path / "pki", "sbx.example.com")      # step 5: the wildcard certificate
    (etc / "netagent-edge/wildcard.pem").write_text(pem.read_text())
    # What systemd would map: the units' paths into the scratch root and tmp_path.
    paths = {"/opt/netagent": str(root / "opt/netagent"), "/etc/netagent": str(etc / "netagent"),
             "/var/lib/": f"{tmp_path}/var/lib/", "/run/netagent-edge": f"{tmp_path}/run/netagent-edge"}
    for d in ("var/lib/netagent", "var/lib/netagent-edge", "run/netagent-edge", "run/netagent"):
        (tmp_path / d).mkdir(parents=True)                      # StateDirectory=, RuntimeDirectory=
    socket = tmp_path / "run/netagent/netagent.sock"
    agent_env = {   # step 3, for the bed: the installed example config plus these overrides
        "NETAGENT_PREFIX": bed.agent_prefix, "NETAGENT_HOST_NETNS": bed.host, "NETAGENT_UPLINK": "up0",
        "NETAGENT_STATE_DIR": f"{tmp_path}/var/lib/netagent", "NETAGENT_API__SOCKET": str(socket),
        "NETAGENT_EDGE_ADDRESSES": json.dumps([f"{UPLINK_IP}:443"]), "NETAGENT_DNS__UPSTREAMS": json.dumps([DNS_IP]),
        "NETAGENT_POOL__SIZE": "2", "NETAGENT_POOL__READY_MIN_SLOTS": "2", "PYTHONPATH": "",
        "NETAGENT_CONFIG": str(etc / "netagent/netagent.toml"),
    }
    (agent_cmd,) = unit_commands(etc / "systemd/system/netagent.service", "ExecStart")
    agent_args = expand(agent_cmd, {}, paths)
    assert agent_args[0] == str(root / "opt/netagent/.venv/bin/netagent")

    class InstalledAgent(Daemon):     # step 4: the unit's ExecStart, run with the venv's python
        cwd = str(tmp_path)

        def command(self) -> list[str]:
            return [str(venv_python(root)), *agent_args]   # the unit's script, by the venv's python
    agent = InstalledAgent(etc / "netagent/netagent.toml", env=agent_env).start()
    procs: list[subprocess.Popen[str]] = []
    guest = None
    try:
        # step 6: the edge's units, their own command lines with edge.env as installed
        edge_env = env_file(etc / "netagent-edge/edge.env")
        # This machine's hard file limit (20000 here) is below the unit's LimitNOFILE: HAProxy
        # sizes its maxconn from what it gets (--maxconn auto), with no edit by the operator.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        haproxy_unit, control_unit = (etc / f"systemd/system/netagent-edge{u}.service" for u in ("-haproxy", ""))
        for pre in unit_commands(haproxy_unit, "ExecStartPre"):
            args = netns_exec(bed.host, expand(pre, edge_env, paths), root, tmp_path)
            out = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=CLEAN_ENV)
            assert out.returncode == 0, f"{args}: {out.stdout}{out.stderr}"
        for unit in (haproxy_unit, control_unit):
            (start,) = unit_commands(unit, "ExecStart")
            limit = [f"--nofile={m}:{m}" for n in unit_commands(unit, "LimitNOFILE") if (m := min(int(n), hard))]
            procs.append(subprocess.Popen(["prlimit", *limit, *netns_exec(bed.host, expand(start, edge_env, paths),
                                                                          root, tmp_path)],
                                          cwd=tmp_path, env=CLEAN_ENV, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))

        # step 7: a sandbox, a server in its guest, exposed; then curl over HTTPS from the internet
        cli = {**agent_env}
        allocated = installed(root, "-m", "netagent", "allocate", "demo", cwd=tmp_path, env=cli)
        assert allocated.returncode == 0, allocated.stdout + allocated.stderr
        with Client(socket_path=str(socket)) as c:
            guest = LightGuest.attach(bed, c.get("demo").network, "rb")
        bed.start_server(guest.name, "--http", str(GUEST_PORT))
        exposed = installed(root, "-m", "netagent", "expose", "demo", str(GUEST_PORT), cwd=tmp_path, env=cli)
        assert exposed.returncode == 0, exposed.stdout + exposed.stderr
        url = f"https://{GUEST_PORT}-demo.sbx.example.com/"
        curl = ["curl", "-sS", "--max-time", "5", "--cacert", str(ca), "--resolve",
                f"{GUEST_PORT}-demo.sbx.example.com:443:{UPLINK_IP}", url]

        def answered() -> str:
            out = sh.run(*curl, ns=bed.inet, check=False)
            return out.stdout + out.stderr
        ok = wait_until(lambda: '"server": "169.254.0.21"' in answered(), timeout=30)
        exited = [(p.args, p.returncode, p.stderr.read()[-800:]) for p in procs if p.poll() is not None]
        assert ok, (answered(), sh.run("ss", "-ltnp", ns=bed.host).stdout, exited)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if guest:
            guest.stop()
        agent.stop()

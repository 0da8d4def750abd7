"""The README's edge commands, as written, in a shell whose hard fd limit is
20,000 (issue 24 part 5): HAProxy starts, with maxconn sized from that limit, and
a request is routed; an explicit maxconn that cannot fit is refused before any
file is written, with a message that names the fix."""
from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

from tests.testbed.haproxy_proc import loopback_port

from .hap import eventually
from .helpers import RawClient, UpstreamServer, sandbox

REPO = Path(__file__).resolve().parents[2]
HARD_LIMIT = "--nofile=20000:20000"


def readme_edge_commands(workdir: Path, http_port: int, registry_url: str) -> list[list[str]]:
    """The shell block of README.md that starts the edge, one argv per command, with
    its paths and port pointed at this test's own."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "--write-haproxy-config" in b)
    commands = [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    venv_bin = str(Path(sys.executable).parent) + "/"
    out = []
    for line in commands:
        line = (line.replace("/tmp/edge", str(workdir)).replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
                .replace("sqlite:///var/lib/netagent/registry.db", registry_url).replace(".venv/bin/", venv_bin))
        out.append(shlex.split(line.rstrip(" &")))
    return out


def haproxy_info(socket_path: str) -> dict[str, str]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(socket_path)
        s.sendall(b"show info\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return dict(line.split(": ", 1) for line in data.decode().splitlines() if ": " in line)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, and SIGKILL if it is still there 10 s later."""
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    proc.kill()
    proc.wait()


async def test_readme_edge_commands_start_under_a_hard_limit_of_20000(tmp_path, registry,
                                                                      upstream: UpstreamServer) -> None:
    workdir = tmp_path / "edge"
    port = loopback_port()
    write, start_haproxy, control = readme_edge_commands(workdir, port, registry.url)
    assert write[1:3] == ["edge", "--domain"] and start_haproxy[0] == "haproxy" and "--registry" in control
    limited = ["prlimit", HARD_LIMIT, "--"]
    subprocess.run(limited + write, check=True, capture_output=True, cwd=REPO)
    await registry.put_sandbox(sandbox("readme1", {3000: (upstream.port, True)}), ttl_s=60)
    log = (tmp_path / "haproxy.log").open("wb")
    haproxy = subprocess.Popen(limited + start_haproxy, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    plane = None
    try:
        sock = str(workdir / "haproxy.sock")
        await eventually(lambda: _answers(sock, haproxy), timeout_s=10)
        info = haproxy_info(sock)
        assert info["Ulimit-n"] == "20000"
        assert 9000 <= int(info["Maxconn"]) < 10000          # sized from the limit: (20000 - its own) / 2
        plane = subprocess.Popen(limited + control, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        await eventually(lambda: _status_is(port, "3000-readme1.sbx.example.test", 200), timeout_s=15)
    finally:
        if plane is not None:
            stop(plane)
        stop(haproxy)
        log.close()


async def test_an_explicit_maxconn_that_does_not_fit_is_refused_with_the_fix(tmp_path) -> None:
    workdir = tmp_path / "edge"
    write, _, _ = readme_edge_commands(workdir, loopback_port(), "sqlite:///unused.db")
    out = subprocess.run(["prlimit", HARD_LIMIT, "--", *write, "--maxconn", "20000"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode != 0
    assert "--maxconn auto" in out.stderr and "LimitNOFILE=" in out.stderr and "ulimit -Hn" in out.stderr
    assert not workdir.exists()                     # refused before anything was written
    ok = subprocess.run(["prlimit", HARD_LIMIT, "--", *write, "--maxconn", "9000"], capture_output=True,
                        text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "    maxconn 9000\n" in (workdir / "haproxy.cfg").read_text()


async def _answers(sock: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, "haproxy exited"
    try:
        return "Maxconn" in await asyncio.to_thread(haproxy_info, sock)
    except OSError:
        return False


async def _status_is(port: int, host: str, status: int) -> bool:
    async with await RawClient.open(port) as client:
        return (await client.request("GET", "/", host)).status == status

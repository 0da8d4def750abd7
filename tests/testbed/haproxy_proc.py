"""A real haproxy (Debian's 2.6) with the edge's rendered config, on loopback
ports and a unix admin socket in the test's directory (a missing haproxy is a
failure, never a skip). Debian's own haproxy service is never used."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest

from netagent.edge.haconfig import EdgeSettings
from netagent.edge.hafiles import write_haproxy_files

HAPROXY = "/usr/sbin/haproxy"


def loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HAProxy:
    def __init__(self, workdir: Path, settings: EdgeSettings) -> None:
        self.workdir = workdir
        self.settings = settings
        self.config_path = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.retired: list[subprocess.Popen[bytes]] = []     # old processes of reloads

    @classmethod
    def for_test(cls, workdir: Path, domain: str, **overrides: object) -> HAProxy:
        workdir.mkdir(parents=True, exist_ok=True)
        settings = EdgeSettings(domain=domain, map_dir=str(workdir / "maps"),
                                admin_socket=str(workdir / "admin.sock"), errors_dir=str(workdir / "errors"),
                                http_listen=(f"127.0.0.1:{loopback_port()}",), shards=8, maxconn=4000)
        return cls(workdir, replace(settings, **overrides))  # type: ignore[arg-type]

    @property
    def http_port(self) -> int:
        return int(self.settings.http_listen[0].rsplit(":", 1)[1])

    @property
    def https_port(self) -> int:
        return int(self.settings.https_listen[0].rsplit(":", 1)[1])

    def start(self, timeout_s: float = 10.0, netns: str | None = None) -> None:
        """Start haproxy (inside `netns` if given: its listeners live there; the admin
        socket is a file, reachable from anywhere)."""
        Path(self.settings.admin_socket).unlink(missing_ok=True)
        self._spawn([], netns)
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            self._check_alive(deadline)
            time.sleep(0.02)

    def reload(self, timeout_s: float = 10.0) -> int:
        """The seamless way, as `systemctl reload` does: a new process takes the listening
        sockets from the old one over the admin socket (-x) and tells it to finish (-sf).
        Returns the new pid once the new process owns the admin socket and the old one
        has stopped its frontend (it accepts nothing new; it exits when its last
        connection closes, which may be a control plane's admin connection)."""
        old = self.proc
        assert old is not None and old.poll() is None, "reload needs a running haproxy"
        self._spawn(["-x", self.settings.admin_socket, "-sf", str(old.pid)])
        self.retired.append(old)
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        stopped = f"({old.pid}) : Proxy edge stopped"
        while self.pid_answering() != self.proc.pid or stopped not in self.log_path.read_text(errors="replace"):
            self._check_alive(deadline)
            time.sleep(0.01)
        return self.proc.pid

    def kill(self) -> None:
        """kill -9: no soft stop, connections in flight are cut."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def _spawn(self, extra: list[str], netns: str | None = None) -> None:
        exe = HAPROXY if os.path.exists(HAPROXY) else shutil.which("haproxy")
        if exe is None:
            pytest.fail("haproxy is not installed (apt-get install haproxy)", pytrace=False)
        write_haproxy_files(self.settings, self.config_path)
        with open(self.log_path, "ab") as log:
            prefix = ["ip", "netns", "exec", netns] if netns else []
            self.proc = subprocess.Popen([*prefix, exe, "-db", "-f", str(self.config_path), *extra],
                                         stdout=log, stderr=subprocess.STDOUT)

    def _check_alive(self, deadline: float) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None or time.monotonic() > deadline:
            self.stop()
            pytest.fail(f"haproxy did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}",
                        pytrace=False)

    def pid_answering(self) -> int | None:
        """The pid of the process that owns the admin socket now."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(self.settings.admin_socket)
                s.sendall(b"show info\n")
                reply = b""
                while chunk := s.recv(4096):
                    reply += chunk
        except OSError:
            return None
        for line in reply.decode(errors="replace").splitlines():
            if line.startswith("Pid: "):
                return int(line[5:])
        return None

    def answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(self.settings.admin_socket)
                s.sendall(b"show info\n")
                return s.recv(64).startswith(b"Name: HAProxy")
        except OSError:
            return False

    def stop(self) -> None:
        for old in self.retired:
            if old.poll() is None:
                old.kill()
            old.wait(timeout=5)
        self.retired = []
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)      # soft stop
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

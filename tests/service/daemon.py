"""The real daemon (`netagent serve`) in a subprocess, for service tests."""
from __future__ import annotations

import json
import os
import re
import signal as signals
import subprocess
import threading
import time
from pathlib import Path

from netagent.client import Client
from tests.testbed import sh


def write_config(bed, tmp: Path, **over) -> Path:
    values = {
        "prefix": bed.agent_prefix, "host_netns": bed.host, "uplink": "up0", "pool_size": 4,
        "state_dir": str(tmp / "state"), "api_socket": str(tmp / "api.sock"), "ruleset_check_interval_s": 0.5,
        "node_id": "test-node", "metrics_address": "127.0.0.1:0", "metrics_refresh_s": 0.5,
        "dns_upstreams": ["192.0.2.53"], "dns_ttl_floor_s": 1,
    } | over
    values.setdefault("pool_max_size", values["pool_size"])   # a fixed pool unless a test asks for growth
    lines = []
    # dict values become [sections], written last (tests that append keys to the
    # file must then append sections only)
    sections = {k: values.pop(k) for k in [k for k, v in values.items() if isinstance(v, dict)]}
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float, list)):
            lines.append(f"{key} = {json.dumps(value)}")
        elif isinstance(value, dict):   # a section, as an inline table of numbers and strings
            lines.append(f"{key} = {{{', '.join(f'{k} = {json.dumps(v)}' for k, v in value.items())}}}")
        else:
            lines.append(f'{key} = "{value}"')
    for name, section in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in section.items()]
    path = tmp / "netagent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    cwd = sh.REPO   # `python -m netagent` imports the checkout from here (or `tree`)

    def __init__(self, config: Path, env: dict[str, str] | None = None, tree: str | None = None):
        self.config = config
        self.env = env
        self.tree = tree or self.cwd   # another checkout's netagent (benches' "before"): `-m` finds it first
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def command(self) -> list[str]:
        return [sh.PYTHON, "-m", "netagent", "serve", "--config", str(self.config)]

    def start(self, timeout: float = 60) -> Daemon:
        """Waits for "netagent ready"; a daemon that exits first, or stays silent
        past `timeout`, is killed and fails the test (never a hang)."""
        self.proc = subprocess.Popen(self.command(), cwd=self.tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env={**os.environ, **(self.env or {})})
        ready, self._reader_done = threading.Event(), threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if self.proc.poll() is not None and not ready.is_set():
                self._reader_done.wait(5)  # the last lines the daemon printed
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before ready:\n" + "".join(self.log))
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"daemon not ready within {timeout} s:\n" + "".join(self.log))
        return self

    def _read(self, ready: threading.Event) -> None:
        assert self.proc and self.proc.stdout
        try:
            for line in self.proc.stdout:
                self.log.append(line)
                if line.startswith("netagent ready"):
                    ready.set()
        finally:
            self._reader_done.set()

    def client(self, **kw) -> Client:
        import tomllib
        sock = tomllib.loads(self.config.read_text())["api_socket"]
        return Client(socket_path=sock, **kw)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`netagent ARGS --config <this daemon's>` in a subprocess."""
        return sh.run(sh.PYTHON, "-m", "netagent", *args, "--config", str(self.config), check=check)

    def scrape(self, netns: str) -> str:
        """The daemon's /metrics text (served in `netns`, the host netns)."""
        port = int(re.search(r"metrics_port=(\d+)", "".join(self.log)).group(1))
        code = "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
        return sh.run(sh.PYTHON, "-c", code, f"http://127.0.0.1:{port}/metrics", ns=netns).stdout

    def metrics(self, netns: str) -> dict[str, float]:
        """One scrape: 'name{"label": "value"}' -> value."""
        from prometheus_client.parser import text_string_to_metric_families
        return {sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
                for family in text_string_to_metric_families(self.scrape(netns)) for sample in family.samples}

    def signal(self, sig: int) -> None:
        assert self.proc
        self.proc.send_signal(sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 30) -> int:
        assert self.proc
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

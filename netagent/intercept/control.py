"""The interceptor process (HAProxy) and what the agent pushes into it: thin I/O.

Per sandbox (by its source address): the rules and the secrets they use, into
the Lua state only (`netagent set`), never a file. Per ruled domain: a
certificate signed by the host CA, written (0600) and added to the live
crt-list before the rules that need it, so a guest's first handshake for a new
name already gets it, with h2 (no on-the-fly generation; docs/architecture.md)."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..edge.runtime import HAProxyError, HAProxyRuntime
from .ca import InterceptCA, write_private
from .haconfig import InterceptSettings, render
from .requestlog import RequestTail
from .rules import RuleSet, encode_for_lua

log = logging.getLogger("netagent.intercept")
START_TIMEOUT_S = 10.0


def cert_file_name(domain: str) -> str:
    return ("_wildcard." + domain[2:] if domain.startswith("*.") else domain) + ".pem"


class Interceptor:
    def __init__(self, settings: InterceptSettings, ca: InterceptCA,
                 on_record: Callable[[dict[str, Any]], None], netns: str | None = None,
                 after_batch: Callable[[dict[str, int]], Awaitable[int | None]] | None = None):
        self.s = settings
        self.ca = ca
        self.tail = RequestTail(settings.state_dir, on_record, after_batch)
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None
        self.runtime = HAProxyRuntime(str(settings.admin_socket), "")
        self._loaded: dict[str, str] = {}      # source address -> what `netagent set` was given
        self._domains: set[str] = set()

    # ---- process -------------------------------------------------------------------

    async def start(self) -> None:
        self.s.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.s.cert_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.s.default_pem.exists():
            write_private(self.s.default_pem, self.ca.leaf_pem("netagent-intercept.invalid"))
        if not self.s.crt_list.exists():
            self.s.crt_list.write_text("")
        self._domains = {line.split()[0] for line in self.s.crt_list.read_text().splitlines() if line.strip()}
        self._domains = {Path(p).name for p in self._domains}
        self.s.config_path.write_text(render(self.s))
        self.tail.start()
        await self._spawn()

    async def _spawn(self) -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.s.admin_socket.unlink(missing_ok=True)
        # nsenter execs haproxy in the netns (no fork): the pid is haproxy's
        path = self.netns if not self.netns or self.netns.startswith("/") else f"/run/netns/{self.netns}"
        prefix = ["nsenter", f"--net={path}"] if path else []
        # An interceptor left by an agent that was killed (-9) keeps serving with
        # what it was last given: the new one takes its listeners over and the
        # old one finishes its open connections, then exits (haproxy -sf).
        previous = self._previous_pid()
        # stdout: the request records (requestlog.py); stderr: its own messages
        records, records_path = self.tail.open_for_writer()
        out = open(self.s.run_dir / "haproxy.out", "ab")
        self.proc = subprocess.Popen([*prefix, exe, "-db", "-f", str(self.s.config_path),
                                      *(["-sf", str(previous)] if previous else [])],
                                     stdout=records, stderr=out)
        os.close(records)
        out.close()
        self.tail.spawned(records_path, self.proc.pid)
        self.s.pid_file.write_text(f"{self.proc.pid}\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            try:
                await self.runtime.connect()
                break
            except HAProxyError:
                if self.proc.poll() is not None or loop.time() > deadline:
                    tail = (self.s.run_dir / "haproxy.out").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"the interceptor (haproxy) did not start:\n{tail}") from None
                await asyncio.sleep(0.02)
        for src, text in self._loaded.items():      # a restarted haproxy knows nothing: push it all again
            await self._set(src, text)

    def _previous_pid(self) -> int | None:
        """The pid in the pid file, if that process is a haproxy on our config."""
        try:
            pid = int(self.s.pid_file.read_text())
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except (OSError, ValueError):
            return None
        alive = self.proc is None or self.proc.pid != pid or self.proc.poll() is None
        return pid if alive and str(self.s.config_path).encode() in cmdline else None

    async def ensure_running(self) -> bool:
        """Restart a dead haproxy (with everything pushed again). True: it was dead."""
        if self.proc is not None and self.proc.poll() is None:
            return False
        log.warning("interceptor: haproxy exited (%s); restarting", self.proc and self.proc.returncode)
        await self.runtime.close()
        await self._spawn()
        return True

    async def stop(self) -> None:
        await self.runtime.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            try:
                await asyncio.to_thread(self.proc.wait, 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 5)
        self.proc = None
        await self.tail.stop()    # after haproxy's exit: its last records are in the file

    # ---- per sandbox -----------------------------------------------------------------

    async def load(self, source: str, sandbox_id: str, rules: RuleSet, secrets: dict[str, str]) -> None:
        """Make `rules` the live rules of the sandbox at `source` (empty: none)."""
        if not rules.rules:
            await self.unload(source)
            return
        for domain in rules.domains:
            await self._ensure_cert(domain)
        text = encode_for_lua(sandbox_id, rules, secrets)
        await self._set(source, text)
        self._loaded[source] = text

    async def unload(self, source: str) -> None:
        self._loaded.pop(source, None)
        (reply,) = await self.runtime.commands([f"netagent del {source}\n"])
        if reply.strip() != "ok":
            raise HAProxyError(f"interceptor refused del {source}: {reply.strip()[:200]}")

    async def _set(self, source: str, text: str) -> None:
        (reply,) = await self.runtime.commands([f"netagent set {source} {text.encode().hex()}\n"])
        if reply.strip() != "ok":   # never echo the command: it holds secret values
            raise HAProxyError(f"interceptor refused the rules of {source}: {reply.strip()[:200]}")

    async def _ensure_cert(self, domain: str) -> None:
        name = cert_file_name(domain)
        if name in self._domains:
            return
        path = self.s.cert_dir / name
        pem = self.ca.leaf_pem(domain)
        write_private(path, pem)
        body = pem.decode().strip()
        replies = await self.runtime.commands([
            f"new ssl cert {path}\n", f"set ssl cert {path} <<\n{body}\n\n", f"commit ssl cert {path}\n",
            f"add ssl crt-list {self.s.crt_list} {path}\n"])
        if "Success" not in replies[2] and "Committing" not in replies[2]:
            raise HAProxyError(f"interceptor: certificate of {domain} not committed: {replies[2].strip()[:200]}")
        if "Inserting" not in replies[3] and "Success" not in replies[3]:
            raise HAProxyError(f"interceptor: certificate of {domain} not in the crt-list: {replies[3].strip()[:200]}")
        lines = self.s.crt_list.read_text() + f"{path}\n"
        tmp = self.s.crt_list.with_suffix(".tmp")
        tmp.write_text(lines)
        os.replace(tmp, self.s.crt_list)
        self._domains.add(name)

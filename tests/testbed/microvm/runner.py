"""MicroVM runners: boot the test guest and run shell commands in it.

A runner boots the guest built by :mod:`.image` with its NIC attached to an
existing tap device inside a named network namespace, waits until the guest
init reports ready on the serial console and then runs commands over that
console (see ``INIT_SCRIPT`` in image.py for the protocol).

Backends:
  * ``QemuRunner``        qemu-system-x86_64 (q35 by default), KVM when it
                          actually boots on this host, TCG otherwise.
  * ``FirecrackerRunner`` the same guest through Firecracker's API socket.

``make_runner(backend, **kw)`` picks one (``NETAGENT_VM_BACKEND``, default qemu).
"""

from __future__ import annotations

import abc
import atexit
import base64
import codecs
import contextlib
import dataclasses
import http.client
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Self

from .image import READY_MARKER, GuestImage, cache_root, ensure_image, extract_vmlinux

DEFAULT_BOOT_TIMEOUT = 60.0
KVM_PROBE_TIMEOUT = 8.0  # a working KVM boots this guest in about a second
CONSOLE_TAIL_CHARS = 3000
RESULT_GRACE_SECONDS = 10.0  # slack over the guest-side timeout for the reply
KILLED_EXIT_CODE = 137  # sh's status for a command SIGKILLed by busybox timeout


@dataclasses.dataclass(frozen=True)
class CommandResult:
    output: str
    exit_code: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class VMError(RuntimeError):
    pass


class CommandTimeout(VMError):
    pass


# --------------------------------------------------------------------------
# serial console


class SerialConsole:
    """Collects a VM's serial output and speaks the guest's command protocol.

    A reader thread drains the process's stdout into a buffer (and a log
    file); ``run`` writes one "RUN <id> <base64>" line and waits for the
    "__BEGIN_<id>__ ... __END_<id>__ <rc>" block that answers it.
    """

    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self._proc = proc
        self._buffer = ""
        self._consumed = 0  # output before this offset belongs to earlier commands
        self._eof = False
        self._cond = threading.Condition()
        self._run_lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, args=(log_path,), name="vm-serial", daemon=True)
        self._thread.start()

    def _drain(self, log_path: Path) -> None:
        fd = self._proc.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with open(log_path, "w", encoding="utf-8", errors="replace") as log:
            while chunk := _read_or_eof(fd):
                text = decoder.decode(chunk).replace("\r", "")
                log.write(text)
                log.flush()
                with self._cond:
                    self._buffer += text
                    self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until ``pattern`` appears in output not yet consumed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = pattern.search(self._buffer, self._consumed)
                if match:
                    self._consumed = match.end()
                    return match
                remaining = deadline - time.monotonic()
                if self._eof:
                    raise VMError(f"VM exited while waiting for {pattern.pattern!r}\n{self.tail()}")
                if remaining <= 0:
                    raise CommandTimeout(f"timed out waiting for {pattern.pattern!r}\n{self.tail()}")
                self._cond.wait(remaining)

    def run(self, cmd: str, timeout: float) -> CommandResult:
        """Run ``cmd``; the guest SIGKILLs it after ``timeout`` seconds.

        Background jobs the command starts (``httpd``, ``nc -l ... &``) keep
        running.  A command killed for its timeout raises CommandTimeout.
        """
        guest_timeout = max(1, math.ceil(timeout))
        with self._run_lock:
            tag = uuid.uuid4().hex[:12]
            payload = base64.b64encode(cmd.encode()).decode()
            self._send(f"RUN {tag} {guest_timeout} {payload}\n")
            started = time.monotonic()
            block = re.compile(rf"__BEGIN_{tag}__\n(.*?)__END_{tag}__ (\d+)\n", re.DOTALL)
            match = self.wait_for(block, guest_timeout + RESULT_GRACE_SECONDS)
            result = CommandResult(output=match.group(1), exit_code=int(match.group(2)))
        if result.exit_code == KILLED_EXIT_CODE and time.monotonic() - started >= guest_timeout:
            raise CommandTimeout(f"guest command timed out after {guest_timeout}s: {cmd!r}\n{result.output}")
        return result

    def _send(self, line: str) -> None:
        try:
            self._proc.stdin.write(line.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise VMError(f"VM is not running\n{self.tail()}") from exc

    def tail(self, chars: int = CONSOLE_TAIL_CHARS) -> str:
        return "--- serial console (tail) ---\n" + self._buffer[-chars:]

    def close(self) -> None:
        self._thread.join(timeout=5)


def _read_or_eof(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


# --------------------------------------------------------------------------
# network namespaces


def netns_path(name: str) -> Path:
    return Path("/run/netns") / name


def in_netns_command(netns: str | None, argv: list[str]) -> list[str]:
    """``argv`` prefixed so that it runs inside the named netns (nsenter(1))."""
    if netns is None:
        return argv
    path = netns_path(netns)
    if not path.exists():
        raise VMError(f"network namespace {netns!r} does not exist ({path})")
    return ["nsenter", f"--net={path}", "--", *argv]


# --------------------------------------------------------------------------
# runner interface


class VMRunner(abc.ABC):
    """A booted guest that runs shell commands; use as a context manager."""

    boot_seconds: float | None = None

    @abc.abstractmethod
    def start(self) -> None:
        """Boot the guest and wait until it accepts commands."""

    @abc.abstractmethod
    def run(self, cmd: str, timeout: float = 30.0) -> CommandResult:
        """Run ``cmd`` with /bin/sh in the guest."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Tear the VM down (idempotent, never raises for a dead VM)."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class SerialConsoleVM(VMRunner):
    """Shared lifecycle for backends whose serial console is the child's stdio."""

    def __init__(self, netns: str | None, boot_timeout: float = DEFAULT_BOOT_TIMEOUT):
        self.netns = netns
        self.boot_timeout = boot_timeout
        self.workdir: Path | None = None  # console.log (+ API socket); made by start()
        self._proc: subprocess.Popen | None = None
        self._console: SerialConsole | None = None

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """argv of the VMM process (run inside the netns)."""

    def _prepare(self) -> None:
        """Hook: slow set-up (image build, KVM probe) kept out of the boot time."""

    def _after_spawn(self) -> None:
        """Hook: configure the VMM once its process is running."""

    def _spawn(self) -> None:
        argv = in_netns_command(self.netns, self._command())
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT)
        _live_vms.add(self)
        self._console = SerialConsole(self._proc, self.workdir / "console.log")

    def start(self) -> None:
        if self._proc is not None:
            raise VMError("VM already started")
        self._prepare()
        self.workdir = Path(tempfile.mkdtemp(prefix="netagent-vm-"))
        started = time.monotonic()
        self._spawn()
        self._after_spawn()
        self._console.wait_for(re.compile(re.escape(READY_MARKER) + r"\n"), self.boot_timeout)
        self.boot_seconds = time.monotonic() - started

    def run(self, cmd: str, timeout: float = 30.0) -> CommandResult:
        if self._console is None:
            raise VMError("VM not started")
        return self._console.run(cmd, timeout)

    def console_tail(self) -> str:
        return self._console.tail() if self._console else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _live_vms.discard(self)
        if proc is not None:
            _terminate(proc)
        if self._console is not None:
            self._console.close()
        if self.workdir and not os.environ.get("NETAGENT_VM_KEEP_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)


# Last resort for VMs whose owner never called stop() (e.g. an interrupted run).
_live_vms: weakref.WeakSet[SerialConsoleVM] = weakref.WeakSet()


@atexit.register
def _stop_leftover_vms() -> None:
    for vm in list(_live_vms):
        vm.stop()


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL; always reap the process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            stream.close()


# --------------------------------------------------------------------------
# qemu


QEMU_BINARY = "qemu-system-x86_64"

# Measured under TCG on the 2-core test machines (guest ready, NIC attached):
# q35 ~2.5 s, pc ~2.7 s.  "microvm" is as fast when idle but has no HPET/PM
# timer: when the host is busy its TSC calibration fails and boot hangs.
DEFAULT_MACHINE = "q35"

_NIC_DEVICE = {"microvm": "virtio-net-device"}  # others: virtio-net-pci

_accel_verdicts: dict[str, str] = {}


def kernel_cmdline(boot_ip_arg: str | None, extra: str = "") -> str:
    parts = ["console=ttyS0", boot_ip_arg or "", "panic=-1", "quiet", extra]
    return " ".join(p for p in parts if p)


def qemu_argv(image: GuestImage, machine: str, accel: str, memory_mb: int, append: str,
              nic: tuple[str, str] | None) -> list[str]:
    """qemu command line; ``nic`` is (tap name, guest MAC) or None."""
    argv = [
        QEMU_BINARY, "-machine", machine, "-accel", accel, "-m", str(memory_mb), "-smp", "1",
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-monitor", "none",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", append,
    ]
    if nic is None:
        argv += ["-nic", "none"]
    else:
        tap, mac = nic
        device = _NIC_DEVICE.get(machine.split(",")[0], "virtio-net-pci")
        argv += ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                 "-device", f"{device},netdev=n0,mac={mac}"]
    return argv


def _qemu_version() -> str:
    out = subprocess.run([QEMU_BINARY, "--version"], check=False, capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def _accel_cache_entry(image: GuestImage, machine: str) -> tuple[Path, str]:
    """(verdict file, key of this host/qemu/image/machine in it)."""
    key = f"{os.uname().release}|{_qemu_version()}|{image.key}|{machine}"
    return cache_root() / "kvm-verdict.json", key


def kvm_boots(image: GuestImage, machine: str = DEFAULT_MACHINE,
              timeout: float = KVM_PROBE_TIMEOUT) -> bool:
    """Try one network-less KVM boot; True if the guest reached its prompt."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    probe = _ProbeVM(image, machine, timeout)
    try:
        probe.start()
        return probe.run("true", timeout=5).ok
    except VMError:
        return False
    finally:
        probe.stop()


def select_accel(image: GuestImage, machine: str = DEFAULT_MACHINE) -> str:
    """'kvm' if a KVM boot works on this host, else 'tcg'.

    ``NETAGENT_VM_ACCEL`` overrides.  The probe's verdict is remembered in
    memory and in <cache root>/kvm-verdict.json, keyed by host kernel, qemu
    version, image and machine type.
    """
    forced = os.environ.get("NETAGENT_VM_ACCEL")
    if forced:
        return forced
    path, key = _accel_cache_entry(image, machine)
    if key in _accel_verdicts:
        return _accel_verdicts[key]
    verdicts = _read_json(path)
    if key not in verdicts:
        verdicts[key] = "kvm" if kvm_boots(image, machine) else "tcg"
        _write_json_atomic(path, verdicts)
    _accel_verdicts[key] = verdicts[key]
    return verdicts[key]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class QemuRunner(SerialConsoleVM):
    """The guest under qemu, NIC on an existing tap inside ``netns``.

    ``image`` defaults to ``ensure_image()``, ``accel`` to ``select_accel()``;
    both are resolved by ``start()``.
    """

    def __init__(self, netns: str, tap: str, guest_mac: str, boot_ip_arg: str,
                 image: GuestImage | None = None, memory_mb: int = 256,
                 machine: str = DEFAULT_MACHINE, accel: str | None = None,
                 boot_timeout: float = DEFAULT_BOOT_TIMEOUT, extra_cmdline: str = ""):
        super().__init__(netns, boot_timeout)
        self.image = image
        self.tap = tap
        self.guest_mac = guest_mac
        self.boot_ip_arg = boot_ip_arg
        self.memory_mb = memory_mb
        self.machine = machine
        self.accel = accel
        self.extra_cmdline = extra_cmdline

    def _prepare(self) -> None:
        if not shutil.which(QEMU_BINARY):
            raise VMError(f"{QEMU_BINARY} not found: apt-get install qemu-system-x86")
        self.image = self.image or ensure_image()
        self.accel = self.accel or select_accel(self.image, self.machine)

    def _command(self) -> list[str]:
        append = kernel_cmdline(self.boot_ip_arg, self.extra_cmdline)
        return qemu_argv(self.image, self.machine, self.accel, self.memory_mb, append,
                         nic=(self.tap, self.guest_mac))


class _ProbeVM(SerialConsoleVM):
    """A NIC-less KVM boot used only to decide whether KVM works."""

    def __init__(self, image: GuestImage, machine: str, timeout: float):
        super().__init__(netns=None, boot_timeout=timeout)
        self.image = image
        self.machine = machine

    def _command(self) -> list[str]:
        return qemu_argv(self.image, self.machine, "kvm", 128, kernel_cmdline(None), nic=None)


# --------------------------------------------------------------------------
# firecracker


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float = 10.0):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.socket_path))


class FirecrackerRunner(SerialConsoleVM):
    """The guest under Firecracker (not exercised on the test machines).

    Firecracker boots an uncompressed ELF ``vmlinux`` on x86_64, not the
    bzImage Debian ships; ``image.extract_vmlinux`` unpacks it (Debian's cloud
    kernel is LZ4-compressed, which needs the ``lz4`` tool; gzip/xz use the
    stdlib).  It is cached next to vmlinuz.  Debian's cloud kernel has
    CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES off, so the virtio-mmio NIC is only
    found through ACPI, i.e. with Firecracker >= 1.8.
    """

    def __init__(self, netns: str, tap: str, guest_mac: str, boot_ip_arg: str,
                 image: GuestImage | None = None, memory_mb: int = 256,
                 boot_timeout: float = DEFAULT_BOOT_TIMEOUT, extra_cmdline: str = "",
                 binary: str = "firecracker"):
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise VMError(f"the {binary!r} binary is not installed; use NETAGENT_VM_BACKEND=qemu")
        super().__init__(netns, boot_timeout)
        self.image = image
        self.tap = tap
        self.guest_mac = guest_mac
        self.boot_ip_arg = boot_ip_arg
        self.memory_mb = memory_mb
        self.extra_cmdline = extra_cmdline

    @property
    def api_socket(self) -> Path:
        return self.workdir / "firecracker.sock"

    def _prepare(self) -> None:
        self.image = self.image or ensure_image()
        vmlinux = self.image.kernel.with_name("vmlinux")
        if not vmlinux.exists():
            extract_vmlinux(self.image.kernel, vmlinux)

    def _command(self) -> list[str]:
        # Warning level: Info lines on stdout would mix into the serial command channel.
        return [self.binary, "--api-sock", str(self.api_socket), "--level", "Warning"]

    def _after_spawn(self) -> None:
        self._wait_for_api_socket()
        self._put("/machine-config", {"vcpu_count": 1, "mem_size_mib": self.memory_mb})
        self._put("/boot-source", {
            "kernel_image_path": str(self.image.kernel.with_name("vmlinux")),
            "initrd_path": str(self.image.initrd),
            "boot_args": kernel_cmdline(self.boot_ip_arg, self.extra_cmdline),
        })
        self._put("/network-interfaces/eth0", {
            "iface_id": "eth0", "host_dev_name": self.tap, "guest_mac": self.guest_mac,
        })
        self._put("/actions", {"action_type": "InstanceStart"})

    def _wait_for_api_socket(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.api_socket.exists():
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise VMError(f"firecracker API socket did not appear\n{self.console_tail()}")
            time.sleep(0.05)

    def _put(self, path: str, body: dict) -> None:
        conn = _UnixHTTPConnection(self.api_socket)
        try:
            conn.request("PUT", path, json.dumps(body),
                         {"Content-Type": "application/json", "Accept": "application/json"})
            response = conn.getresponse()
            detail = response.read().decode(errors="replace")
            if response.status >= 300:
                raise VMError(f"firecracker PUT {path} -> {response.status}: {detail}")
        finally:
            conn.close()


# --------------------------------------------------------------------------


BACKENDS = {"qemu": QemuRunner, "firecracker": FirecrackerRunner}


def make_runner(backend: str | None = None, **kwargs) -> VMRunner:
    """Build a runner; ``backend`` defaults to $NETAGENT_VM_BACKEND or 'qemu'."""
    name = backend or os.environ.get("NETAGENT_VM_BACKEND") or "qemu"
    try:
        runner_class = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown VM backend {name!r}; choose from {sorted(BACKENDS)}") from None
    return runner_class(**kwargs)


if __name__ == "__main__":  # manual check: python3 -m tests.testbed.microvm.runner
    image = ensure_image()
    print("accel:", select_accel(image), file=sys.stderr)

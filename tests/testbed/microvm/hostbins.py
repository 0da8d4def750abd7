"""Host programs for the guest image: a dynamically linked binary (Debian's
curl) with the shared libraries ``ldd`` lists and the dynamic loader.

Each file goes into the initramfs at the path ``ldd`` prints (the loader at
its PT_INTERP path, the libraries under /lib/x86_64-linux-gnu, which the
loader searches without an ld.so.cache), with the bytes of its resolved
target, so the guest runs the host's own build unchanged: a TLS client that
verifies certificates against /etc/ssl/certs/ca-certificates.crt, the path
Debian's libcurl was built with (the image ships no bundle there: a test
installs one at run time).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

# The guest's certificate-verifying client.  Its package is in the Makefile's APT_PACKAGES.
GUEST_PROGRAMS = (Path("/usr/bin/curl"),)
GUEST_TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"

_LDD_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")


class HostBinaryError(RuntimeError):
    pass


def shared_libraries(binary: Path) -> list[Path]:
    """The loader and every library `binary` needs, as ldd resolves them."""
    proc = subprocess.run(["ldd", str(binary)], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HostBinaryError(f"ldd {binary} failed ({proc.returncode}): {proc.stderr.strip()}")
    found: list[Path] = []
    for line in proc.stdout.splitlines():
        if "not found" in line:
            raise HostBinaryError(f"{binary}: a library is missing on this host: {line.strip()}")
        match = _LDD_LINE.match(line)
        if match:                      # linux-vdso has no path: the kernel maps it
            found.append(Path(match.group(1)))
    if not any(p.name.startswith("ld-linux") for p in found):
        raise HostBinaryError(f"{binary} is not dynamically linked (ldd: {proc.stdout.strip()!r})")
    return found


def guest_files(programs: tuple[Path, ...] = GUEST_PROGRAMS) -> dict[str, bytes]:
    """initramfs path (no leading /) -> content, for the programs and their libraries."""
    files: dict[str, bytes] = {}
    for program in programs:
        if not program.exists():
            raise HostBinaryError(f"{program} is not installed: run `make deps`")
        for path in (program, *shared_libraries(program)):
            files[str(path).lstrip("/")] = path.resolve().read_bytes()
    return dict(sorted(files.items()))


def digest(files: dict[str, bytes]) -> str:
    """A hash of paths and contents: the image key changes with any of them."""
    h = hashlib.sha256()
    for name, data in sorted(files.items()):
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:12]

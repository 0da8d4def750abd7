"""Guest image builder for the microVM test harness (stdlib only).

The guest is Debian's cloud kernel plus a small initramfs: busybox-static, the
virtio network modules, the host's curl with its shared libraries (a TLS client
that verifies certificates, see hostbins.py) and an init script that configures
eth0 from the kernel ``ip=`` argument and then serves a command channel on ttyS0.

Both packages are fetched with ``apt-get download`` and unpacked with
``dpkg -x``; nothing is installed on the host.  The result is cached under
``<cache root>/guest/<key>/`` where the key names the exact package versions
and a hash of the init script, builder version and the host files copied in.

Run ``python3 -m tests.testbed.microvm.image`` to build (or find) the image
and print its paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

from .hostbins import digest as files_digest
from .hostbins import guest_files

# Bump when the image layout changes in a way the init-script hash misses.
BUILDER_VERSION = "2"

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"

# Modules the guest needs; their dependencies are resolved from the kernel.
# virtio_mmio serves the qemu "microvm" machine and Firecracker, virtio_pci
# the pc/q35 machines.
WANTED_MODULES = ("virtio_pci", "virtio_mmio", "virtio_net")

DEFAULT_CACHE_ROOT = Path("/var/cache/netagent-test")

READY_MARKER = "__NETAGENT_READY__"

# PID 1 of the guest (busybox sh).  The serial command protocol is:
#   host -> guest:  "RUN <id> <timeout seconds> <base64 of a sh script>\n"
#   guest -> host:  "__BEGIN_<id>__\n" <output> "__END_<id>__ <exit code>\n"
# The markers never appear literally in what the host sends, so a tty echo
# can not be mistaken for them.
INIT_SCRIPT = r"""#!/bin/sh
# netagent test guest init (PID 1)
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run /www
# Keep kernel messages off the serial command channel.
echo 1 > /proc/sys/kernel/printk

load_modules() {
    for mod in $(cat /etc/netagent/modules); do
        insmod "/lib/modules/$mod.ko" || echo "netagent-init: insmod $mod failed"
    done
}

kernel_ip_arg() {
    for word in $(cat /proc/cmdline); do
        case "$word" in ip=*) echo "${word#ip=}" ;; esac
    done
}

wait_for_link() {
    n=0
    while [ ! -e "/sys/class/net/$1" ] && [ "$n" -lt 50 ]; do
        sleep 0.1
        n=$((n + 1))
    done
}

# ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>
configure_net() {
    old_ifs=$IFS
    IFS=:
    set -- $1
    IFS=$old_ifs
    client=$1 gw=$3 mask=$4 host=$5 dev=${6:-eth0} dns0=$8 dns1=$9
    wait_for_link "$dev"
    ifconfig "$dev" "$client" netmask "${mask:-255.255.255.0}" up
    [ -n "$gw" ] && route add default gw "$gw" dev "$dev"
    [ -n "$host" ] && hostname "$host"
    for dns in $dns0 $dns1; do echo "nameserver $dns" >> /etc/resolv.conf; done
}

load_modules
ip link set lo up
ip_arg=$(kernel_ip_arg)
[ -n "$ip_arg" ] && configure_net "$ip_arg"
echo netagent-guest > /www/index.html

# The command loop runs as a child, not as PID 1: orphaned background jobs are
# re-parented to PID 1, and their SIGCHLD would interrupt the loop's `read`
# (busybox ash then drops the partly read line).
serial=/dev/ttyS0
stty -F "$serial" raw -echo 2>/dev/null
while true; do
    /bin/netagent-serve < "$serial" > "$serial" 2>&1
    sleep 1
done
"""

# The serial command loop (see the protocol above INIT_SCRIPT).
SERVE_SCRIPT = r"""#!/bin/sh
echo "@READY@"
while read -r verb id secs payload; do
    [ "$verb" = RUN ] || continue
    echo "$payload" | base64 -d > /tmp/cmd.sh 2>/dev/null
    echo "__BEGIN_${id}__"
    timeout -s KILL "$secs" sh /tmp/cmd.sh < /dev/null
    echo "__END_${id}__ $?"
done
""".replace("@READY@", READY_MARKER)


@dataclasses.dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    key: str


class ImageBuildError(RuntimeError):
    pass


class AptDownloadError(ImageBuildError):
    pass


# --------------------------------------------------------------------------
# apt helpers


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageBuildError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def candidate_fields(*packages: str) -> dict[str, dict[str, str]]:
    """Control fields of the apt candidate version of each package."""
    out = _run(["apt-cache", "show", "--no-all-versions", *packages])
    found: dict[str, dict[str, str]] = {}
    for stanza in out.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.MULTILINE))
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], fields)
    missing = [p for p in packages if p not in found]
    if missing:
        raise ImageBuildError(f"apt has no candidate for {missing} (run apt-get update?)")
    return found


def resolve_packages() -> tuple[str, str, str]:
    """(real kernel package, its version, busybox-static version).

    The cloud metapackage depends on exactly one linux-image-<abi>-cloud-amd64.
    """
    fields = candidate_fields(KERNEL_META_PACKAGE, BUSYBOX_PACKAGE)
    depends = fields[KERNEL_META_PACKAGE].get("Depends", "")
    match = re.search(r"(linux-image-[0-9][^\s,(]*-cloud-amd64)(?: \(= ([^)]+)\))?", depends)
    if not match:
        raise ImageBuildError(f"cannot find the kernel package in Depends: {depends!r}")
    kernel_pkg, kernel_ver = match.groups()
    if kernel_ver is None:
        kernel_ver = candidate_fields(kernel_pkg)[kernel_pkg]["Version"]
    return kernel_pkg, kernel_ver, fields[BUSYBOX_PACKAGE]["Version"]


def download_and_extract(package: str, version: str, dest: Path) -> None:
    """apt-get download ``package=version`` and dpkg -x it into ``dest``."""
    with tempfile.TemporaryDirectory(prefix="apt-dl-") as tmp:
        os.chmod(tmp, 0o755)  # lets apt's _apt user write there (no warning)
        try:
            _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=Path(tmp))
        except ImageBuildError as exc:
            raise AptDownloadError(str(exc)) from exc
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise ImageBuildError(f"expected one .deb for {package}, got {debs}")
        dest.mkdir(parents=True, exist_ok=True)
        _run(["dpkg", "-x", str(debs[0]), str(dest)])


# --------------------------------------------------------------------------
# kernel modules


def _module_name(path: Path) -> str:
    name = path.name.split(".ko")[0]
    return name.replace("-", "_")


def read_module(path: Path) -> bytes:
    """Return the uncompressed bytes of a .ko, .ko.xz, .ko.zst or .ko.gz."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        if not shutil.which("zstd"):
            raise ImageBuildError(f"{path.name} is zstd-compressed: install the 'zstd' package")
        return subprocess.run(["zstd", "-dcq", str(path)], check=True, capture_output=True).stdout
    return data


def _modinfo_depends(module_bytes: bytes) -> list[str]:
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", module_bytes)
    if not match or not match.group(1):
        return []
    return [d.decode().replace("-", "_") for d in match.group(1).split(b",")]


class ModuleTree:
    """The modules of one kernel under lib/modules/<release>."""

    def __init__(self, moddir: Path):
        self.moddir = moddir
        self.paths = {
            _module_name(p): p for p in (moddir / "kernel").rglob("*.ko*") if ".ko" in p.name
        }
        self.builtin = self._read_builtin()
        self.deps_from_file = self._read_modules_dep()

    def _read_builtin(self) -> set[str]:
        path = self.moddir / "modules.builtin"
        if not path.exists():
            return set()
        return {_module_name(Path(line.strip())) for line in path.read_text().splitlines() if line}

    def _read_modules_dep(self) -> dict[str, list[str]] | None:
        path = self.moddir / "modules.dep"
        if not path.exists():
            return None  # Debian ships no modules.dep: depmod runs at install
        deps = {}
        for line in path.read_text().splitlines():
            target, _, rest = line.partition(":")
            deps[_module_name(Path(target))] = [_module_name(Path(d)) for d in rest.split()]
        return deps

    def depends(self, name: str) -> list[str]:
        if self.deps_from_file is not None:
            return self.deps_from_file.get(name, [])
        return _modinfo_depends(read_module(self.paths[name]))

    def load_order(self, wanted: tuple[str, ...]) -> list[str]:
        """Wanted modules and their dependencies, dependencies first."""
        order: list[str] = []

        def visit(name: str, chain: tuple[str, ...]) -> None:
            if name in order or name in self.builtin:
                return
            if name in chain:
                raise ImageBuildError(f"module dependency cycle: {chain + (name,)}")
            if name not in self.paths:
                raise ImageBuildError(f"module {name} not found in {self.moddir}")
            for dep in self.depends(name):
                visit(dep, chain + (name,))
            order.append(name)

        for name in wanted:
            visit(name, ())
        return order


# --------------------------------------------------------------------------
# newc cpio writer


class CpioWriter:
    """Minimal writer for the "newc" cpio format the kernel unpacks."""

    def __init__(self, out: io.BufferedIOBase):
        self.out = out
        self.inode = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self.inode, mode, 0, 0, 1, 0, len(data),  # ino mode uid gid nlink mtime size
            0, 0, rdev[0], rdev[1], len(encoded), 0,  # dev maj/min, rdev maj/min, namesize, check
        )
        self.inode += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(header + encoded)
        self.out.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


def _busybox_applets(busybox: Path) -> list[str]:
    """Paths such as 'bin/sh' for every applet (the binary is static)."""
    out = _run([str(busybox), "--list-full"])
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def _parents(paths) -> list[str]:
    """Every directory above the given initramfs paths, parents first."""
    dirs = {str(parent) for p in paths for parent in Path(p).parents if str(parent) != "."}
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def write_initramfs(dest: Path, busybox: Path, modules: list[tuple[str, bytes]],
                    host_files: dict[str, bytes] | None = None) -> None:
    """Write a gzip-compressed newc initramfs; ``host_files`` (path -> bytes) are added executable."""
    host_files = host_files or {}
    base = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "www",
            "etc", "etc/netagent", "etc/ssl", "etc/ssl/certs", "lib", "lib/modules")
    with open(dest, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        cpio = CpioWriter(gz)
        for directory in base + tuple(d for d in _parents(host_files) if d not in base):
            cpio.directory(directory)
        cpio.char_device("dev/console", 5, 1)
        cpio.char_device("dev/null", 1, 3)
        cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in _busybox_applets(busybox):
            if applet != "bin/busybox":
                cpio.symlink(applet, "/bin/busybox")
        for name, data in modules:
            cpio.file(f"lib/modules/{name}.ko", data)
        cpio.file("etc/netagent/modules", "".join(f"{name}\n" for name, _ in modules).encode())
        cpio.file("init", INIT_SCRIPT.encode(), 0o755)
        cpio.file("bin/netagent-serve", SERVE_SCRIPT.encode(), 0o755)
        for name, data in host_files.items():
            cpio.file(name, data, 0o755)
        cpio.close()


# --------------------------------------------------------------------------
# vmlinux extraction (for Firecracker)


def _bzimage_payload(bzimage: bytes) -> bytes:
    """The compressed kernel inside a bzImage (boot protocol >= 2.08)."""
    if bzimage[0x202:0x206] != b"HdrS":
        raise ImageBuildError("not a bzImage (no HdrS header)")
    setup_sectors = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sectors + 1) * 512 + offset
    return bzimage[start:start + length]


def _decompress_payload(payload: bytes) -> bytes:
    if payload.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=31).decompress(payload)
    if payload.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor().decompress(payload)
    tools = {b"\x02\x21\x4c\x18": ("lz4", 4), b"\x28\xb5\x2f\xfd": ("zstd", 0)}
    for magic, (tool, size_suffix) in tools.items():
        if payload.startswith(magic):
            if not shutil.which(tool):
                raise ImageBuildError(f"the kernel is {tool}-compressed: install the '{tool}' package")
            data = payload[:-size_suffix] if size_suffix else payload  # kbuild appends the size
            return subprocess.run([tool, "-dcq"], input=data, check=True, capture_output=True).stdout
    raise ImageBuildError(f"unknown kernel compression (magic {payload[:4].hex()})")


def extract_vmlinux(bzimage: Path, dest: Path) -> Path:
    """Write the uncompressed ELF vmlinux inside ``bzimage`` to ``dest``.

    Equivalent of the kernel's scripts/extract-vmlinux, using the payload
    offset from the bzImage header instead of scanning for magics.
    """
    elf = _decompress_payload(_bzimage_payload(bzimage.read_bytes()))
    if not elf.startswith(b"\x7fELF"):
        raise ImageBuildError(f"decompressed {bzimage} is not an ELF image")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}")
    tmp.write_bytes(elf)
    os.replace(tmp, dest)
    return dest


# --------------------------------------------------------------------------
# cache + build


def cache_root() -> Path:
    return Path(os.environ.get("NETAGENT_CACHE_DIR") or DEFAULT_CACHE_ROOT)


def image_key(kernel_version: str, busybox_ver: str, host_files_digest: str) -> str:
    recipe = "\0".join((BUILDER_VERSION, INIT_SCRIPT, SERVE_SCRIPT, ",".join(WANTED_MODULES),
                        host_files_digest))
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    raw = f"k{kernel_version}-bb{busybox_ver}-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)


def _image_from_dir(directory: Path, key: str) -> GuestImage:
    return GuestImage(kernel=directory / "vmlinuz", initrd=directory / "initramfs.img", key=key)


def _is_complete(directory: Path) -> bool:
    return (directory / "manifest.json").exists()


@contextlib.contextmanager
def _build_lock(root: Path):
    """Serialise builders so concurrent callers don't all download."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_into(workdir: Path, kernel_pkg: str, kernel_ver: str, bb_ver: str, key: str,
               host_files: dict[str, bytes]) -> None:
    """Build vmlinuz, initramfs.img and manifest.json into ``workdir``."""
    extracted = workdir / "extract"
    download_and_extract(kernel_pkg, kernel_ver, extracted / "kernel")
    download_and_extract(BUSYBOX_PACKAGE, bb_ver, extracted / "busybox")

    release = kernel_pkg.removeprefix("linux-image-")
    shutil.copyfile(extracted / "kernel" / "boot" / f"vmlinuz-{release}", workdir / "vmlinuz")
    tree = ModuleTree(extracted / "kernel" / "lib" / "modules" / release)
    order = tree.load_order(WANTED_MODULES)
    modules = [(name, read_module(tree.paths[name])) for name in order]
    write_initramfs(workdir / "initramfs.img", extracted / "busybox" / "bin" / "busybox", modules, host_files)

    manifest = {"key": key, "kernel_package": kernel_pkg, "kernel_version": kernel_ver,
                "kernel_release": release, "busybox_version": bb_ver, "modules": order,
                "host_files": sorted(host_files)}
    (workdir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(extracted)


def ensure_image() -> GuestImage:
    """Return the cached guest image, building it first if needed."""
    try:
        return _ensure_image()
    except AptDownloadError:
        # Stale apt lists name a .deb the mirror no longer has: refresh, retry.
        _run(["apt-get", "update", "-qq"])
        return _ensure_image()


def _ensure_image() -> GuestImage:
    kernel_pkg, kernel_ver, bb_ver = resolve_packages()
    host_files = guest_files()
    key = image_key(kernel_ver, bb_ver, files_digest(host_files))
    guest_root = cache_root() / "guest"
    final = guest_root / key
    if _is_complete(final):
        return _image_from_dir(final, key)

    with _build_lock(guest_root):
        if _is_complete(final):  # built by someone else while we waited
            return _image_from_dir(final, key)
        workdir = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=guest_root))
        try:
            build_into(workdir, kernel_pkg, kernel_ver, bb_ver, key, host_files)
            workdir.chmod(0o755)
            if final.exists():  # stale, incomplete leftover
                shutil.rmtree(final)
            os.rename(workdir, final)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return _image_from_dir(final, key)


def main() -> int:
    image = ensure_image()
    print(f"key:    {image.key}")
    print(f"kernel: {image.kernel}")
    print(f"initrd: {image.initrd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

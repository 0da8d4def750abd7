"""Network namespaces without forking: setns(2)/unshare(2) on the calling thread.

A named netns is a bind mount of a thread's /proc/thread-self/ns/net on
/run/netns/<name>, the same layout iproute2 uses, so `ip netns exec` works on it.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def path_of(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns")


def current_fd() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with this thread inside the netns at `path`, then come back."""
    home = current_fd()
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(target)
        os.close(home)


def enter_for_good(path: str | None) -> None:
    """Move the calling thread into `path` (no-op for None)."""
    if path:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(fd)
        finally:
            os.close(fd)


def _ensure_run_dir() -> None:
    """Make /run/netns a shared mount point, as `ip netns add` does."""
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    if _libc.mount(b"none", NETNS_RUN_DIR.encode(), None, MS_SHARED | MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:
        _check(-1, "mount --make-shared /run/netns")
    _check(_libc.mount(NETNS_RUN_DIR.encode(), NETNS_RUN_DIR.encode(), b"none",
                       MS_BIND | MS_REC, None), "mount --bind /run/netns")
    _check(_libc.mount(b"none", NETNS_RUN_DIR.encode(), None, MS_SHARED | MS_REC, None),
           "mount --make-shared /run/netns")


_run_dir_ready = False


def create(name: str) -> str:
    """Create the named netns from this thread (no fork) and return its path."""
    global _run_dir_ready
    if not _run_dir_ready:
        _ensure_run_dir()
        _run_dir_ready = True
    path = path_of(name)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    home = current_fd()
    try:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            _check(_libc.mount(b"/proc/thread-self/ns/net", path.encode(), b"none", MS_BIND, None),
                   f"bind mount {path}")
        finally:
            setns(home)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    finally:
        os.close(home)
    return path


def delete(name: str) -> bool:
    """Unmount and remove a named netns. Returns False if it did not exist."""
    path = path_of(name)
    if not os.path.exists(path):
        return False
    if _libc.umount2(path.encode(), MNT_DETACH) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(-1, f"umount {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def list_names(prefix: str = "") -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_RUN_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def write_sysctl(key: str, value: str) -> None:
    """Write a sysctl of the calling thread's netns (net.* sysctls follow the thread)."""
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)

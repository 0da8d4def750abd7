"""Frame relay between a slot's tap and a light guest's tap.

`python -m tests.testbed.relay SLOT_NETNS SLOT_TAP GUEST_NETNS GUEST_TAP`
Opens the slot tap as a VMM would (from inside the slot netns), opens the guest's
own tap in its netns, and copies Ethernet frames both ways until killed.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import select
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
BATCH = 256
_libc = ctypes.CDLL(None, use_errno=True)


def open_tap(netns: str, name: str) -> int:
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    if _libc.setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), f"setns {netns}")
    os.close(fd)
    tap = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    return tap


def main() -> None:
    slot_ns, slot_tap, guest_ns, guest_tap = sys.argv[1:5]
    a = open_tap(slot_ns, slot_tap)
    b = open_tap(guest_ns, guest_tap)
    for fd in (a, b):
        os.set_blocking(fd, False)
    peer = {a: b, b: a}
    # The relay stands in for a VMM's I/O thread, which is not what the tests
    # measure: ahead of the rest of a loaded test host, so the wire does not
    # drop frames before they reach the agent's rules.
    os.nice(-10)
    print("ready", flush=True)
    while True:
        for fd in select.select([a, b], [], [])[0]:
            # Drain what queued while we were not scheduled: one frame per
            # select() let a loaded host overflow the tap's queue (1,000 new
            # flows/s lost frames here, not in the agent).
            for _ in range(BATCH):
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                try:
                    os.write(peer[fd], frame)
                except OSError:
                    pass  # a dropped frame is what a wire does


if __name__ == "__main__":
    main()

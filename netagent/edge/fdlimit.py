"""How many connections HAProxy can hold with the file descriptors it may open.

HAProxy needs two descriptors per connection (client and server side) plus a
few of its own, and refuses to start when `maxconn` needs more than the hard
limit ("Cannot raise FD limit to 40028, limit is 20000"). `maxconn auto` (the
default) leaves `maxconn` out of the config, so HAProxy sizes it from its own
hard limit at every start (9,986 at 20,000 descriptors; measured with 2.6), and
`fd-hard-limit` caps that on hosts whose limit is huge. An explicit maxconn is
checked here, before any file is written, against the limit of this process.
"""
from __future__ import annotations

import resource

# An upper bound for auto sizing: a host with 1M descriptors would otherwise
# reserve per-fd tables for 500k connections. ~50,000 connections.
FD_CAP = 100_000


def fds_needed(maxconn: int, threads: int, listeners: int) -> int:
    """Descriptors HAProxy 2.6 asks for (measured: 2*maxconn + 25 + 3 per thread,
    with one listener and the admin socket), with a margin of 8 for other listeners."""
    return 2 * maxconn + 25 + 3 * threads + listeners + 8


def hard_limit() -> int:
    """This process's hard RLIMIT_NOFILE (what HAProxy started from here may reach)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return FD_CAP * 10 if hard == resource.RLIM_INFINITY else hard


class FdLimitError(ValueError):
    """An explicit maxconn that HAProxy could not start with here."""


def check_maxconn(maxconn: int, threads: int, listeners: int, hard: int | None = None) -> None:
    """Refuse an explicit maxconn (0 is auto: always fits) the hard limit cannot hold."""
    if maxconn == 0:
        return
    hard = hard_limit() if hard is None else hard
    need = fds_needed(maxconn, threads, listeners)
    if need <= hard:
        return
    fits = max((hard - fds_needed(0, threads, listeners)) // 2, 0)
    raise FdLimitError(
        f"--maxconn {maxconn} needs about {need} file descriptors and the hard limit here is {hard}, "
        f"so haproxy would refuse to start (\"Cannot raise FD limit\"). Fix: use --maxconn auto (haproxy "
        f"sizes it from its own limit), or --maxconn {fits} or less, or raise the hard limit where haproxy "
        f"runs (ulimit -Hn {need} as root, or LimitNOFILE={need} in its systemd unit).")

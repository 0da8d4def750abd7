"""maxconn and file descriptors (issue 24 part 5): auto leaves maxconn to HAProxy
under a cap; an explicit maxconn is checked against the hard limit, pure."""
from __future__ import annotations

import pytest

from netagent.edge.fdlimit import FD_CAP, FdLimitError, check_maxconn, fds_needed
from netagent.edge.haconfig import EdgeSettings, render


def settings(**kw: object) -> EdgeSettings:
    base = dict(domain="sbx.example.test", map_dir="/m", admin_socket="/a.sock", errors_dir="/e", shards=2)
    return EdgeSettings(**{**base, **kw})  # type: ignore[arg-type]


def test_auto_leaves_maxconn_to_haproxy_under_a_cap() -> None:
    text = render(settings())
    assert "\n    maxconn" not in text and f"\n    fd-hard-limit {FD_CAP} " in text
    assert "\n    maxconn 5000\n" in render(settings(maxconn=5000))


def test_an_explicit_maxconn_must_fit_the_hard_limit() -> None:
    # HAProxy 2.6 asked for 40,028 fds for maxconn 20000, 2 threads, 1 listener.
    assert fds_needed(20000, 2, 1) >= 40028
    check_maxconn(0, 2, 1, hard=1024)                       # auto always fits
    check_maxconn(9900, 2, 1, hard=20000)
    with pytest.raises(FdLimitError) as refused:
        check_maxconn(20000, 2, 1, hard=20000)
    message = str(refused.value)
    assert "--maxconn auto" in message and "LimitNOFILE=" in message and "ulimit -Hn" in message
    fits = int(message.split("or --maxconn ")[1].split()[0])
    check_maxconn(fits, 2, 1, hard=20000)
    with pytest.raises(FdLimitError):
        check_maxconn(fits + 1, 2, 1, hard=20000)


def test_negative_maxconn_is_refused() -> None:
    with pytest.raises(ValueError):
        render(settings(maxconn=-1))

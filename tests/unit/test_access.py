"""Edge access of a port (pure): the update rule, the token hash, refusals that never quote the token."""
from __future__ import annotations

import hashlib

import pytest

from netagent.access import PortAccess
from netagent.errors import InvalidArgument

TOKEN = "a-token-of-20-chars!"


def test_private_with_token_then_rotate_then_public() -> None:
    a = PortAccess().updated(public=False, access_token=TOKEN, host_mask="localhost:{port}")
    assert a == PortAccess(False, hashlib.sha256(TOKEN.encode()).hexdigest(), "localhost:{port}")
    b = a.updated(access_token="another-token-0123")
    assert b.token_sha256 == hashlib.sha256(b"another-token-0123").hexdigest() and not b.public
    assert b.host_mask == "localhost:{port}"                       # None keeps a field
    assert b.updated(public=True, access_token="", host_mask="") == PortAccess()


@pytest.mark.parametrize("kwargs", [
    {"public": False},                                     # private needs a token
    {"public": False, "access_token": ""},
    {"access_token": "short"},
    {"access_token": "has space in it 1234"},
    {"access_token": "semi;colon-0123456789"},
    {"access_token": "x" * 513},
    {"host_mask": "evil\r\nX-Injected: 1"},
    {"host_mask": "a b"},
    {"host_mask": "host:{guest}"},
])
def test_bad_access_is_refused_without_quoting_the_token(kwargs: dict) -> None:
    with pytest.raises(InvalidArgument) as err:
        PortAccess().updated(**kwargs)
    token = kwargs.get("access_token")
    assert not token or token not in str(err.value)


def test_masks_accepted() -> None:
    for mask in ("localhost", "localhost:3000", "localhost:{port}", "127.0.0.1:8080", "[::1]:{port}", "app.local"):
        assert PortAccess().updated(host_mask=mask).host_mask == mask

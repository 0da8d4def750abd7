"""Edge access of an exposed port: public or private with a token, and host masking.

Only the token's SHA-256 is ever kept (state, registry, logs never see the token).
Pure: validation and the update rule; the agent stores the result.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from .errors import InvalidArgument

MIN_TOKEN_LEN = 16
MAX_TOKEN_LEN = 512
# A Host value: a name or [IPv6], an optional :port, or {port} for the guest port.
HOST_MASK = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\])(?::(?:[0-9]{1,5}|\{port\}))?")
TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")   # visible ASCII: it travels in a header or a cookie


@dataclass(frozen=True)
class PortAccess:
    public: bool = True
    token_sha256: str = ""
    host_mask: str = ""

    def updated(self, public: bool | None = None, access_token: str | None = None,
                host_mask: str | None = None) -> PortAccess:
        """The access after a call; None leaves a field as it is. Raises InvalidArgument
        before anything changes."""
        sha = None if access_token is None else (token_sha256(access_token) if access_token else "")
        return self.with_changes(public, sha, None if host_mask is None else check_host_mask(host_mask))

    def with_changes(self, public: bool | None, token_sha256: str | None, host_mask: str | None) -> PortAccess:
        """The update rule on already validated values (the token already hashed)."""
        new = self
        if token_sha256 is not None:
            new = replace(new, token_sha256=token_sha256)
        if public is not None:
            new = replace(new, public=public)
        if host_mask is not None:
            new = replace(new, host_mask=host_mask)
        if not new.public and not new.token_sha256:
            raise InvalidArgument("a private port needs an access_token")
        return new


def check_host_mask(host_mask: str) -> str:
    if host_mask and (len(host_mask) > 260 or not HOST_MASK.fullmatch(host_mask) or ";" in host_mask):
        raise InvalidArgument(f"host_mask {host_mask!r} is not HOST[:PORT] (PORT may be {{port}})")
    return host_mask


def token_sha256(token: str) -> str:
    """Raises InvalidArgument (never quoting the token) for a token unfit for a header or cookie."""
    if (not MIN_TOKEN_LEN <= len(token) <= MAX_TOKEN_LEN or not TOKEN_CHARS.fullmatch(token)
            or ";" in token or "," in token):
        raise InvalidArgument(f"access_token must be {MIN_TOKEN_LEN}-{MAX_TOKEN_LEN} visible ASCII characters "
                              "without ';' or ','")
    return hashlib.sha256(token.encode()).hexdigest()

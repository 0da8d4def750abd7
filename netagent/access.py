"""Edge access of an exposed port: public or private with a token, host masking, and
the edge path that serves it (mode: http, or raw tcp over TLS by SNI).

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
MODES = ("http", "tcp")
# A private TCP port's token travels in the SNI label {port}--{token}-{sandboxId}
# (docs/edge.md, "Raw TCP"): lowercase letters and digits, and the label fits 63 bytes.
SNI_TOKEN = re.compile(r"[a-z0-9]+")
MAX_LABEL = 63


@dataclass(frozen=True)
class PortAccess:
    public: bool = True
    token_sha256: str = ""
    host_mask: str = ""
    mode: str = "http"

    def updated(self, public: bool | None = None, access_token: str | None = None,
                host_mask: str | None = None) -> PortAccess:
        """The access after a call; None leaves a field as it is. Raises InvalidArgument
        before anything changes."""
        sha = None if access_token is None else (token_sha256(access_token) if access_token else "")
        return self.with_changes(public, sha, None if host_mask is None else check_host_mask(host_mask))

    def with_changes(self, public: bool | None, token_sha256: str | None, host_mask: str | None,
                     mode: str | None = None, token_fits_sni: bool = False) -> PortAccess:
        """The update rule on already validated values (the token already hashed;
        token_fits_sni: the call's token can travel in the port's SNI label)."""
        new = self
        if mode is not None:
            new = replace(new, mode=check_mode(mode))
        if token_sha256 is not None:
            new = replace(new, token_sha256=token_sha256)
        if public is not None:
            new = replace(new, public=public)
        if host_mask is not None:
            new = replace(new, host_mask=host_mask)
        if not new.public and not new.token_sha256:
            raise InvalidArgument("a private port needs an access_token")
        private_tcp = new.mode == "tcp" and not new.public
        if private_tcp and token_sha256 is not None and not token_fits_sni:
            raise InvalidArgument(_SNI_RULE)
        if private_tcp and token_sha256 is None and not (self.mode == "tcp" and not self.public):
            # Only the hash is kept: whether an earlier token fits the SNI label is unknown.
            raise InvalidArgument("a port that becomes private TCP needs its access_token in the same call; "
                                  + _SNI_RULE)
        return new


_SNI_RULE = ("a private TCP port's access_token must be lowercase letters and digits, and "
             "'{port}--{token}-{sandboxId}' at most 63 characters (it travels in the TLS SNI)")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidArgument(f"mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


def token_fits_sni(sandbox_id: str, guest_port: int, token: str) -> bool:
    """Whether the token can be a private TCP port's credential label {port}--{token}-{sandboxId}."""
    return bool(SNI_TOKEN.fullmatch(token)) and len(f"{guest_port}--{token}-{sandbox_id}") <= MAX_LABEL


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

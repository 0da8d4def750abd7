"""Which sandbox port a request is for: pure parsing of Host and two headers.

Host form:   Host: {port}-{sandboxId}.{domain}   (the leftmost label, split at its first '-')
Header form: Host: {shared_host} with X-Sandbox-Id and X-Sandbox-Port
Host matching is case-insensitive and ignores a `:port` suffix and a trailing dot.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SANDBOX_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
DNS_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
PORT = re.compile(r"[1-9][0-9]{0,4}")
_HOST_PORT_SUFFIX = re.compile(r":[0-9]*$")


@dataclass(frozen=True)
class Target:
    sandbox_id: str
    port: int


class RouteError(ValueError):
    """The request names no sandbox port we can parse (answered with 400)."""


def parse_port(text: str) -> int | None:
    if not PORT.fullmatch(text):
        return None
    port = int(text)
    return port if port <= 65535 else None


def normalize_host(host: str) -> str:
    """Lowercase, without a `:port` suffix or a trailing dot."""
    host = _HOST_PORT_SUFFIX.sub("", host.strip()).lower()
    return host[:-1] if host.endswith(".") else host


class Router:
    def __init__(self, domain: str, shared_host: str | None = None) -> None:
        self.domain = normalize_host(domain)
        self.shared_host = normalize_host(shared_host) if shared_host else None
        if not self.domain:
            raise ValueError("the edge needs a domain")

    def route(self, host: str | None, sandbox_id_header: str | None = None,
              port_header: str | None = None) -> Target:
        if not host:
            raise RouteError("missing Host header")
        name = normalize_host(host)
        if self.shared_host is not None and name == self.shared_host:
            return self._from_headers(sandbox_id_header, port_header)
        label, dot, rest = name.partition(".")
        if not dot or rest != self.domain:
            raise RouteError(f"host {name!r} is not {{port}}-{{sandboxId}}.{self.domain}")
        return self._from_label(label)

    def _from_label(self, label: str) -> Target:
        port_text, dash, sandbox_id = label.partition("-")
        port = parse_port(port_text)
        if not dash or port is None:
            raise RouteError(f"host label {label!r} does not start with a port (1-65535) and '-'")
        if len(label) > 63 or not DNS_ID.fullmatch(sandbox_id) or not SANDBOX_ID.fullmatch(sandbox_id):
            raise RouteError(f"host label {label!r} does not end with a sandbox id")
        return Target(sandbox_id, port)

    @staticmethod
    def _from_headers(sandbox_id: str | None, port_text: str | None) -> Target:
        sandbox_id = (sandbox_id or "").strip()
        if not SANDBOX_ID.fullmatch(sandbox_id):
            raise RouteError("X-Sandbox-Id is missing or not a sandbox id")
        port = parse_port((port_text or "").strip())
        if port is None:
            raise RouteError("X-Sandbox-Port is missing or not a port (1-65535)")
        return Target(sandbox_id, port)

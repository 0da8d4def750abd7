"""Custom domains: what a mapping is, its statuses, and the pure rules the manager
(domainmanager.py) follows: hostname checks, backoff, rate limits, renewal.

No I/O here: every function takes the time it needs as an argument.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import asdict, dataclass, field

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_SANDBOX_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")

# Statuses (docs/edge.md, "Custom domains").
PENDING = "pending"              # accepted; the DNS check or the order has not run yet
DNS_MISMATCH = "dns_mismatch"    # the name does not resolve to this edge: retried with backoff
RATE_LIMITED = "rate_limited"    # an order would exceed a rate limit: retried when it frees
ORDERING = "ordering"            # an ACME order is in flight (at most one per domain)
ISSUED = "issued"                # a certificate is installed and served
FAILED = "failed"                # the ACME server refused or failed: retried with backoff


class DomainError(ValueError):
    """A mapping the API refuses (400), with a message for the caller."""


def check_hostname(name: str, edge_domain: str) -> str:
    """The normalised name (lower case, no trailing dot) of a custom domain, or DomainError.
    It must be a full DNS name of at least two labels, letters, digits and inner hyphens
    only (no wildcard, no IP address, no underscore), and not the edge's own domain
    or under it (those names are the sandboxes' own URLs)."""
    host = name.strip().lower().rstrip(".") if isinstance(name, str) else ""
    if not host or len(host) > 253:
        raise DomainError(f"{name!r} is not a hostname (1 to 253 characters)")
    labels = host.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise DomainError(f"{name!r} is not a hostname: labels of letters, digits and inner '-', "
                          "at least two labels, no wildcard")
    if labels[-1].isdigit():
        raise DomainError(f"{name!r} is an address, not a hostname")
    edge = edge_domain.lower().rstrip(".")
    if host == edge or host.endswith("." + edge):
        raise DomainError(f"{host} is under the edge's own domain {edge}: those names are sandbox URLs")
    return host


def check_target(sandbox_id: object, port: object) -> tuple[str, int]:
    """The sandbox port a domain maps to: a routable sandbox id (a DNS label) and a port."""
    if not isinstance(sandbox_id, str) or not _SANDBOX_ID.fullmatch(sandbox_id) or len(sandbox_id) > 57:
        raise DomainError(f"sandboxId {sandbox_id!r} is not a routable sandbox id (a lowercase DNS label)")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise DomainError(f"port {port!r} is not 1..65535")
    return sandbox_id, port


@dataclass
class DomainRecord:
    """One custom domain: its owner (the sandbox port) and where its certificate stands."""
    domain: str
    sandbox_id: str
    port: int
    status: str = PENDING
    detail: str = ""                  # why: the DNS answer, the ACME error, the limit hit
    attempts: int = 0                 # failures in a row (DNS or ACME); 0 after an issue
    next_attempt_at: float = 0.0      # unix seconds; 0: now
    not_after: float = 0.0            # the served certificate's expiry (unix seconds), 0: none
    issued_at: float = 0.0
    renewing: bool = False            # an order for a renewal is in flight; the old cert is served
    created_at: float = 0.0

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        return {"domain": d["domain"], "sandboxId": d["sandbox_id"], "port": d["port"], "status": d["status"],
                "detail": d["detail"], "attempts": d["attempts"], "nextAttemptAt": d["next_attempt_at"] or None,
                "notAfter": d["not_after"] or None, "issuedAt": d["issued_at"] or None,
                "renewing": d["renewing"], "createdAt": d["created_at"]}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> DomainRecord:
        return cls(domain=str(d["domain"]), sandbox_id=str(d["sandboxId"]), port=int(d["port"]),  # type: ignore[arg-type]
                   status=str(d["status"]), detail=str(d.get("detail") or ""),
                   attempts=int(d.get("attempts") or 0),  # type: ignore[arg-type]
                   next_attempt_at=float(d.get("nextAttemptAt") or 0),  # type: ignore[arg-type]
                   not_after=float(d.get("notAfter") or 0), issued_at=float(d.get("issuedAt") or 0),  # type: ignore[arg-type]
                   created_at=float(d.get("createdAt") or 0))  # type: ignore[arg-type]

    def internal_host(self, edge_domain: str) -> str:
        """The sandbox URL's host the edge routes this domain as."""
        return f"{self.port}-{self.sandbox_id}.{edge_domain}"


@dataclass(frozen=True)
class Backoff:
    """Exponential: base, 2·base, 4·base … capped; the n-th failure in a row waits delay(n)."""
    base_s: float = 30.0
    cap_s: float = 3600.0

    def delay(self, failures: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** max(0, min(failures - 1, 40)))


@dataclass
class SlidingLimit:
    """At most `count` events in any `window_s`; `wait(now)` is 0 when one may happen now,
    else the seconds until the oldest event leaves the window."""
    count: int
    window_s: float
    _events: deque[float] = field(default_factory=deque)

    def wait(self, now: float) -> float:
        while self._events and self._events[0] <= now - self.window_s:
            self._events.popleft()
        if len(self._events) < self.count:
            return 0.0
        return self._events[0] + self.window_s - now

    def take(self, now: float) -> None:
        self._events.append(now)


@dataclass
class OrderLimits:
    """Orders per domain and for the whole edge (an ACME CA limits both; a flood of
    mappings must not get the edge's account blocked). A removed domain keeps its count,
    so removing and re-adding it does not reset its limit."""
    per_domain: int = 5
    global_count: int = 50
    window_s: float = 3600.0
    _domains: dict[str, SlidingLimit] = field(default_factory=dict)
    _global: SlidingLimit | None = None

    def wait(self, domain: str, now: float) -> tuple[float, str]:
        """(seconds to wait, which limit) before an order for `domain` may start; (0, "") now."""
        if self._global is None:
            self._global = SlidingLimit(self.global_count, self.window_s)
        d = self._domains.setdefault(domain, SlidingLimit(self.per_domain, self.window_s))
        own, everyone = d.wait(now), self._global.wait(now)
        if own >= everyone and own > 0:
            return own, f"at most {self.per_domain} orders per domain in {self.window_s:g} s"
        if everyone > 0:
            return everyone, f"at most {self.global_count} orders per edge in {self.window_s:g} s"
        return 0.0, ""

    def take(self, domain: str, now: float) -> None:
        assert self._global is not None, "wait() first"
        self._domains[domain].take(now)
        self._global.take(now)


def renewal_due(record: DomainRecord, now: float, renew_before_s: float) -> bool:
    return record.status == ISSUED and not record.renewing and record.not_after - now <= renew_before_s

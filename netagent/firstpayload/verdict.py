"""Allowed or refused: what a first payload names against the sandbox's domain
entries and the names that admitted the address. Pure."""
from __future__ import annotations

from dataclasses import dataclass

from ..policy import domain_allowed
from .parse import HTTP, TLS, Garbage, Named, Nameless, NeedMore, Result

# Denied-flow reasons (the log prefixes of rules/firstpayload.nft).
REASON_SNI, REASON_HOST, REASON_QUIC = "sni", "host", "quic"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str        # REASON_SNI / REASON_HOST (whose check decided)
    name: str | None   # the name the payload gave, if any
    why: str           # for the log line


def decide(result: Result, domains: tuple[str, ...], admitted_by: frozenset[str]) -> Verdict | None:
    """None while the message is not whole. `admitted_by`: the allowed names
    whose answers admitted this address for this sandbox."""
    reason = REASON_SNI if result.kind == TLS else REASON_HOST
    if isinstance(result, NeedMore):
        return None
    if isinstance(result, Garbage):
        return Verdict(False, reason, None, result.why)
    if isinstance(result, Named):
        if domain_allowed(result.name, domains):
            return Verdict(True, reason, result.name, "allowed name")
        return Verdict(False, reason, result.name, "name not allowed")
    assert isinstance(result, Nameless)
    if len(admitted_by) == 1:
        return Verdict(True, reason, None, f"no name; the address was admitted for {next(iter(admitted_by))} only")
    what = "no server name" if result.kind == TLS else "no Host" if result.kind == HTTP else "no name"
    return Verdict(False, reason, None, f"{what}; the address was admitted for {len(admitted_by)} names")

"""What the gateway resolver does with one question from one sandbox. Pure.

Three modes, from the sandbox's egress policy (docs/security.md):

| internet | domain entries | the name is …      | verdict                        |
|----------|----------------|--------------------|--------------------------------|
| on       | none           | anything           | forward, admit nothing         |
| on       | some           | in the allowlist   | forward, admit the A records   |
| on       | some           | not in it          | forward, admit nothing         |
| off      | some           | in the allowlist   | forward, admit the A records   |
| off      | some           | not in it          | REFUSED, never forwarded       |
| off      | none           | anything           | REFUSED, never forwarded       |

Admitting matters only where the IP rules would not let the address through:
internet off, or an internet-on sandbox whose `deny_out` covers it (allow beats
deny, and a domain entry is an allow entry). An unknown source (no sandbox
owns the address) is refused.

AAAA: sandboxes have no IPv6, so whatever the upstream has, a name that exists
gets an empty NOERROR answer (glibc and curl then use the A answer at once);
NXDOMAIN and other errors pass through as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..policy import domain_allowed
from .wire import NOERROR, TYPE_AAAA


class ResolverPolicy(Protocol):
    """The two facts of a sandbox's policy the resolver needs (CompiledPolicy has them)."""
    @property
    def internet(self) -> bool: ...
    @property
    def domains(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Verdict:
    forward: bool     # False: answer REFUSED, send nothing upstream
    admit: bool       # put the answer's A records into fqdn_ips for this sandbox


REFUSE = Verdict(forward=False, admit=False)
FORWARD = Verdict(forward=True, admit=False)
FORWARD_AND_ADMIT = Verdict(forward=True, admit=True)


def decide(policy: ResolverPolicy | None, name: str | None) -> Verdict:
    if policy is None or name is None:
        return REFUSE
    if domain_allowed(name, policy.domains):
        return FORWARD_AND_ADMIT
    return FORWARD if policy.internet else REFUSE


def hide_aaaa(qtype: int, upstream_rcode: int | None) -> bool:
    """True: answer this query with an empty NOERROR instead of the upstream's answer."""
    return qtype == TYPE_AAAA and upstream_rcode == NOERROR

"""The resolver's three modes, per question (netagent/dns/decision.py)."""
from __future__ import annotations

import pytest

from netagent.dns.decision import FORWARD, FORWARD_AND_ADMIT, REFUSE, decide, hide_aaaa
from netagent.dns.wire import NOERROR, NXDOMAIN, SERVFAIL, TYPE_A, TYPE_AAAA
from netagent.models import EgressPolicy
from netagent.policy import compile_policy


def policy(internet: bool, *allow: str):
    return compile_policy(EgressPolicy(internet=internet, allow_out=list(allow)))


@pytest.mark.parametrize(("internet", "allow", "name", "verdict"), [
    (True, (), "anything.example.", FORWARD),                         # internet on: forward, admit nothing
    (True, ("203.0.113.0/24",), "anything.example.", FORWARD),        # CIDR entries are not domains
    (True, ("allowed.test",), "allowed.test.", FORWARD_AND_ADMIT),    # a domain entry beats deny_out
    (True, ("allowed.test",), "other.test.", FORWARD),
    (False, ("allowed.test", "*.cdn.test"), "allowed.test.", FORWARD_AND_ADMIT),
    (False, ("allowed.test", "*.cdn.test"), "a.cdn.test.", FORWARD_AND_ADMIT),
    (False, ("allowed.test", "*.cdn.test"), "cdn.test.", REFUSE),     # the suffix itself is not in it
    (False, ("allowed.test",), "other.test.", REFUSE),                # never forwarded
    (False, (), "allowed.test.", REFUSE),                             # internet off, no domains
    (False, ("203.0.113.0/24",), "allowed.test.", REFUSE),
])
def test_three_modes(internet, allow, name, verdict):
    assert decide(policy(internet, *allow), name) == verdict


def test_unknown_sandbox_or_no_name_is_refused():
    assert decide(None, "allowed.test.") == REFUSE
    assert decide(policy(True), None) == REFUSE


def test_aaaa_of_an_existing_name_is_hidden_errors_pass_through():
    assert hide_aaaa(TYPE_AAAA, NOERROR)
    assert not hide_aaaa(TYPE_AAAA, NXDOMAIN) and not hide_aaaa(TYPE_AAAA, SERVFAIL)
    assert not hide_aaaa(TYPE_A, NOERROR)

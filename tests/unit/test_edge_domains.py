"""The pure parts of custom domains: hostname checks, backoff, order limits, renewal,
the JWS the ACME client signs, and what the config gains (netagent/edge/domains.py,
acme.py, domainconfig.py)."""
from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from netagent.edge import acme, domainconfig
from netagent.edge.domains import (
    ISSUED,
    PENDING,
    Backoff,
    DomainError,
    DomainRecord,
    OrderLimits,
    check_hostname,
    check_target,
    renewal_due,
)
from netagent.edge.haconfig import EdgeSettings, render

EDGE = "sbx.example.com"


@pytest.mark.parametrize("name, want", [
    ("app.customer.com", "app.customer.com"), ("App.Customer.COM.", "app.customer.com"),
    ("a-b.c0.example", "a-b.c0.example"), ("xn--bcher-kva.example", "xn--bcher-kva.example"),
])
def test_good_hostnames_are_normalised(name: str, want: str) -> None:
    assert check_hostname(name, EDGE) == want


@pytest.mark.parametrize("name", [
    "", "localhost", "bad_char.example.com", "*.example.com", "a..example.com", "-a.example.com",
    "a-.example.com", "a b.example.com", "10.0.0.1", "x" * 64 + ".example.com", ("a." * 127) + "com",
    "app.customer.com/x", "app.customer.com:443", "ёж.example.com", "3000-abc.sbx.example.com", EDGE,
    "deep.3000-abc.sbx.example.com",
])
def test_bad_hostnames_and_the_edges_own_domain_are_refused(name: str) -> None:
    with pytest.raises(DomainError):
        check_hostname(name, EDGE)


@pytest.mark.parametrize("sid, port", [("ABC", 80), ("a_b", 80), ("", 80), (None, 80), ("abc", 0),
                                       ("abc", 65536), ("abc", "80"), ("abc", True), ("-abc", 80)])
def test_bad_targets_are_refused(sid: object, port: object) -> None:
    with pytest.raises(DomainError):
        check_target(sid, port)


def test_backoff_doubles_to_its_cap() -> None:
    b = Backoff(base_s=30, cap_s=3600)
    assert [b.delay(n) for n in (1, 2, 3, 4, 7, 8, 1000)] == [30, 60, 120, 240, 1920, 3600, 3600]


def test_order_limits_per_domain_and_global() -> None:
    limits = OrderLimits(per_domain=2, global_count=3, window_s=100)
    for domain in ("a.test", "a.test", "b.test"):
        assert limits.wait(domain, 0.0) == (0.0, "")
        limits.take(domain, 0.0)
    wait, why = limits.wait("a.test", 10.0)
    assert wait == 90.0 and "per domain" in why
    wait, why = limits.wait("c.test", 10.0)
    assert wait == 90.0 and "per edge" in why
    assert limits.wait("c.test", 100.0) == (0.0, "")      # the window slid past the three orders


def test_renewal_is_due_inside_the_window_once() -> None:
    r = DomainRecord("a.test", "abc", 3000, status=ISSUED, not_after=1000.0)
    assert not renewal_due(r, now=100.0, renew_before_s=800)
    assert renewal_due(r, now=200.0, renew_before_s=800)
    r.renewing = True
    assert not renewal_due(r, now=200.0, renew_before_s=800)
    assert not renewal_due(DomainRecord("b.test", "abc", 1, status=PENDING), now=0, renew_before_s=1e9)


def test_record_json_round_trip() -> None:
    r = DomainRecord("a.test", "abc", 3000, status=ISSUED, detail="x", attempts=2, next_attempt_at=5.0,
                     not_after=9.0, issued_at=3.0, created_at=1.0)
    assert DomainRecord.from_json(json.loads(json.dumps(r.to_json()))) == r
    assert r.internal_host(EDGE) == f"3000-abc.{EDGE}"


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_jws_is_es256_over_protected_and_payload() -> None:
    key = acme.new_key()
    doc = json.loads(acme.jws(key, {"alg": "ES256", "nonce": "n", "url": "https://ca/x", "kid": "k"}, {"a": 1}))
    sig = _b64d(doc["signature"])
    assert len(sig) == 64
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.public_key().verify(der, f"{doc['protected']}.{doc['payload']}".encode(), ec.ECDSA(hashes.SHA256()))
    assert json.loads(_b64d(doc["payload"])) == {"a": 1}
    assert json.loads(_b64d(doc["protected"]))["kid"] == "k"
    empty = json.loads(acme.jws(key, {"alg": "ES256"}, None))
    assert empty["payload"] == ""                     # POST-as-GET


def test_thumbprint_is_rfc7638_of_the_ec_jwk() -> None:
    key = acme.new_key()
    members = acme.jwk(key)
    assert list(members) == ["crv", "kty", "x", "y"] and len(_b64d(members["x"])) == 32
    want = base64.urlsafe_b64encode(hashlib.sha256(
        json.dumps(members, sort_keys=True, separators=(",", ":")).encode()).digest()).rstrip(b"=").decode()
    assert acme.thumbprint(key) == want


def _settings(**kw: object) -> EdgeSettings:
    return EdgeSettings(domain=EDGE, map_dir="/m", admin_socket="/s", errors_dir="/e",
                        https_listen=("0.0.0.0:443",), tls_pem="/w.pem", **kw)  # type: ignore[arg-type]


def test_config_with_custom_domains_loads_the_crt_list_and_answers_challenges() -> None:
    text = render(_settings(certs_dir="/c"))
    assert "bind 0.0.0.0:443 ssl crt-list /c/crt-list.txt alpn h2,http/1.1 strict-sni" in text
    assert "map(/m/acme.map)" in text and "map(/m/domains.map)" in text
    # The challenge is answered before the redirect to HTTPS; the custom host is rewritten after it.
    assert text.index("acme.map") < text.index("redirect location") < text.index("domains.map")


def test_config_without_custom_domains_is_unchanged_in_substance() -> None:
    text = render(_settings())
    assert "ssl crt /w.pem alpn" in text and "acme.map" not in text and "domains.map" not in text
    with pytest.raises(ValueError):
        render(_settings(certs_dir="relative"))


def test_crt_list_puts_the_wildcard_first() -> None:
    assert domainconfig.crt_list_text("/w.pem", ["/c/b.test.pem", "/c/a.test.pem"]) == \
        "/w.pem\n/c/a.test.pem\n/c/b.test.pem\n"


def test_the_edge_command_passes_certs_dir_to_the_config() -> None:
    from netagent.cli import build_parser
    from netagent.edge.hacli import settings_from
    argv = ["edge", "--domain", EDGE, "--write-haproxy-config", "/x.cfg", "--https-listen", "0.0.0.0:443",
            "--tls-pem", "/w.pem", "--certs-dir", "/c"]
    settings = settings_from(build_parser(argv).parse_args(argv))
    assert settings.certs_dir == "/c" and "crt-list /c/crt-list.txt" in render(settings)


async def test_an_unexpected_error_in_an_attempt_backs_off(tmp_path) -> None:
    """A resolver that is not IP:PORT raises inside the DNS check: the domain is `failed`
    with a retry time, not retried on every pass of the worker."""
    from netagent.edge.certruntime import CertRuntime
    from netagent.edge.domainmanager import AcmeSettings, DomainManager
    from netagent.edge.domains import FAILED
    settings = AcmeSettings("https://ca.invalid/dir", EDGE, frozenset({"127.0.0.1"}), resolver="not-an-address:x",
                            backoff=Backoff(30, 60))
    manager = DomainManager(settings, CertRuntime(None, str(tmp_path), str(tmp_path), "/w.pem"),  # type: ignore[arg-type]
                            clock=lambda: 1000.0)
    record = DomainRecord("a.test", "abc", 80)
    manager.records["a.test"] = record
    await manager._attempt(record)
    assert record.status == FAILED and record.attempts == 1 and record.next_attempt_at == 1030.0
    assert "internal error" in record.detail


def test_public_addresses_are_compared_in_one_form() -> None:
    from netagent.edge.hacli import public_addresses
    assert public_addresses(["203.0.113.5", "2001:DB8:0:0::1", "[2001:db8::2]"]) == \
        frozenset({"203.0.113.5", "2001:db8::1", "2001:db8::2"})
    with pytest.raises(SystemExit):
        public_addresses(["edge.example.com"])

"""A small ACME client (RFC 8555) for HTTP-01: account, order, authorization,
challenge, finalize with a CSR, download. JWS ES256 with `cryptography`.

The HTTP calls are blocking urllib calls run in a thread (a few per order); the flow
is async so the caller can publish the challenge answer into HAProxy between steps.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

USER_AGENT = "netagent-edge-acme/1"
HTTP_TIMEOUT_S = 15.0
BAD_NONCE_RETRIES = 5


class AcmeError(Exception):
    """The ACME server refused or failed; `problem` is its RFC 7807 document, if any."""

    def __init__(self, message: str, problem: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.problem = problem or {}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int32(n: int) -> bytes:
    return n.to_bytes(32, "big")


def jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    nums = key.public_key().public_numbers()
    return {"crv": "P-256", "kty": "EC", "x": b64url(_int32(nums.x)), "y": b64url(_int32(nums.y))}


def thumbprint(key: ec.EllipticCurvePrivateKey) -> str:
    """RFC 7638: SHA-256 of the JWK's required members, sorted, no whitespace."""
    return b64url(hashlib.sha256(json.dumps(jwk(key), sort_keys=True, separators=(",", ":")).encode()).digest())


def jws(key: ec.EllipticCurvePrivateKey, protected: dict[str, object], payload: object | None) -> bytes:
    """A flattened JWS, ES256 (r‖s, 32 bytes each). payload None: POST-as-GET (empty payload)."""
    head = b64url(json.dumps(protected, separators=(",", ":")).encode())
    body = "" if payload is None else b64url(json.dumps(payload, separators=(",", ":")).encode())
    r, s = decode_dss_signature(key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    return json.dumps({"protected": head, "payload": body, "signature": b64url(_int32(r) + _int32(s))}).encode()


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the ACME account key is not an EC key")
    return key


def not_after(cert: x509.Certificate) -> float:
    """Unix seconds (Debian 12's cryptography has only the naive UTC datetime)."""
    return cert.not_valid_after.replace(tzinfo=datetime.UTC).timestamp()


def csr_der(domain: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


@dataclass
class Issued:
    chain_pem: bytes       # the leaf first, then the intermediates
    key_pem: bytes
    not_after: float       # unix seconds


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        return json.loads(self.body) if self.body else {}


Publish = Callable[[str, str], Awaitable[None]]     # (token, key authorization)


class AcmeClient:
    """One account on one ACME server. `ca_file` is the CA the server's HTTPS
    certificate chains to (pebble's own test CA in the tests; the system's otherwise)."""

    def __init__(self, directory_url: str, account_key: ec.EllipticCurvePrivateKey, ca_file: str = "",
                 contact: str = "", poll_interval_s: float = 0.5, poll_timeout_s: float = 60.0) -> None:
        self.directory_url = directory_url
        self.key = account_key
        self.contact = contact
        self.poll_interval_s = poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        self._ssl = ssl.create_default_context(cafile=ca_file or None)
        self._directory: dict[str, object] = {}
        self._nonce = ""
        self._kid = ""
        self._lock = asyncio.Lock()     # one account registration, shared nonces

    async def issue(self, domain: str, publish: Publish, unpublish: Callable[[str], Awaitable[None]]) -> Issued:
        """Order a certificate for `domain`, proving control by HTTP-01 through `publish`
        (which must make http://domain/.well-known/acme-challenge/TOKEN answer the key
        authorization before it returns)."""
        await self._account()
        order_resp = await self._post(str(self._directory["newOrder"]),
                                      {"identifiers": [{"type": "dns", "value": domain}]})
        order_url = order_resp.headers.get("location", "")
        order = order_resp.json()
        for authz_url in order.get("authorizations", []):   # type: ignore[union-attr]
            await self._authorize(str(authz_url), publish, unpublish)
        cert_key = new_key()
        await self._post(str(order["finalize"]), {"csr": b64url(csr_der(domain, cert_key))})
        order = await self._poll(order_url, ("valid",), ("invalid",))
        chain = (await self._post(str(order["certificate"]), None)).body
        leaf = x509.load_pem_x509_certificate(chain)
        return Issued(chain, key_pem(cert_key), not_after(leaf))

    async def _authorize(self, authz_url: str, publish: Publish, unpublish: Callable[[str], Awaitable[None]]) -> None:
        authz = (await self._post(authz_url, None)).json()
        if authz.get("status") == "valid":
            return
        challenges = [c for c in authz.get("challenges", []) if c.get("type") == "http-01"]  # type: ignore[union-attr]
        if not challenges:
            raise AcmeError(f"no http-01 challenge offered for {authz.get('identifier')}")
        challenge = challenges[0]
        token = str(challenge["token"])
        try:     # unpublished however it ends, a cancel included
            await publish(token, f"{token}.{thumbprint(self.key)}")
            await self._post(str(challenge["url"]), {})
            await self._poll(authz_url, ("valid",), ("invalid", "deactivated", "expired", "revoked"))
        finally:
            await unpublish(token)

    async def _poll(self, url: str, done: tuple[str, ...], bad: tuple[str, ...]) -> dict[str, object]:
        deadline = time.monotonic() + self.poll_timeout_s
        while True:
            doc = (await self._post(url, None)).json()
            status = doc.get("status")
            if status in done:
                return doc
            if status in bad:
                raise AcmeError(f"{url} is {status}: {_problem_text(doc)}", _problem_of(doc))
            if time.monotonic() > deadline:
                raise AcmeError(f"{url} still {status} after {self.poll_timeout_s:g} s")
            await asyncio.sleep(self.poll_interval_s)

    async def _account(self) -> None:
        async with self._lock:
            if self._kid:
                return
            if not self._directory:
                self._directory = (await asyncio.to_thread(self._http, "GET", self.directory_url, None)).json()
            payload: dict[str, object] = {"termsOfServiceAgreed": True}
            if self.contact:
                payload["contact"] = [self.contact]
            resp = await self._post(str(self._directory["newAccount"]), payload, use_jwk=True)
            self._kid = resp.headers["location"]

    async def _post(self, url: str, payload: object | None, use_jwk: bool = False) -> _Response:
        """A signed POST (payload None: POST-as-GET); a badNonce is retried with a fresh nonce."""
        for attempt in range(BAD_NONCE_RETRIES + 1):
            nonce = self._nonce or await self._new_nonce()
            self._nonce = ""
            protected: dict[str, object] = {"alg": "ES256", "nonce": nonce, "url": url}
            if use_jwk:
                protected["jwk"] = jwk(self.key)
            else:
                protected["kid"] = self._kid
            resp = await asyncio.to_thread(self._http, "POST", url, jws(self.key, protected, payload))
            self._nonce = resp.headers.get("replay-nonce", "")
            if resp.status < 400:
                return resp
            problem = _problem_of(resp.json()) if resp.body.startswith(b"{") else {}
            if problem.get("type") == "urn:ietf:params:acme:error:badNonce" and attempt < BAD_NONCE_RETRIES:
                continue
            raise AcmeError(f"{url} answered {resp.status}: {_problem_text(problem) or resp.body[:200]!r}", problem)
        raise AssertionError("unreachable")

    async def _new_nonce(self) -> str:
        resp = await asyncio.to_thread(self._http, "HEAD", str(self._directory["newNonce"]), None)
        return resp.headers["replay-nonce"]

    def _http(self, method: str, url: str, body: bytes | None) -> _Response:
        headers = {"User-Agent": USER_AGENT}
        if body is not None:
            headers["Content-Type"] = "application/jose+json"
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S, context=self._ssl) as r:
                return _Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
        except urllib.error.HTTPError as e:
            return _Response(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())
        except (urllib.error.URLError, OSError) as e:
            raise AcmeError(f"ACME server {url}: {e}") from e


def _problem_of(doc: dict[str, object]) -> dict[str, object]:
    if "error" in doc and isinstance(doc["error"], dict):
        return doc["error"]
    for c in doc.get("challenges", []) or []:   # type: ignore[union-attr]
        if isinstance(c, dict) and isinstance(c.get("error"), dict):
            return c["error"]
    return doc if "type" in doc else {}


def _problem_text(doc: dict[str, object]) -> str:
    p = _problem_of(doc)
    return f"{p.get('type', '')} {p.get('detail', '')}".strip()

"""What custom domains add to HAProxy's config and files: pure text.

- `acme.map` (token → key authorization): the frontend answers
  `/.well-known/acme-challenge/TOKEN` from it on any listener, before the redirect to
  HTTPS (an ACME server fetches it over plain HTTP). Empty on disk: a challenge lives
  only as long as its order.
- `domains.map` (custom host → the sandbox URL's host, `3000-abc.DOMAIN`): the
  frontend routes a custom host as that sandbox host, after the redirect (which keeps
  the customer's name). Written to disk by the control plane.
- `crt-list.txt` in the certificates directory: the wildcard certificate first (the
  default), then one line per issued custom domain; the HTTPS listeners load it, and
  the control plane adds and removes lines at runtime (`add/del ssl crt-list`).
"""
from __future__ import annotations

ACME_MAP = "acme.map"
DOMAINS_MAP = "domains.map"
CRT_LIST = "crt-list.txt"
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


def acme_map(map_dir: str) -> str:
    return f"{map_dir}/{ACME_MAP}"


def domains_map(map_dir: str) -> str:
    return f"{map_dir}/{DOMAINS_MAP}"


def crt_list(certs_dir: str) -> str:
    return f"{certs_dir}/{CRT_LIST}"


def cert_path(certs_dir: str, domain: str) -> str:
    """One PEM per custom domain (chain and key), named by the checked hostname."""
    return f"{certs_dir}/{domain}.pem"


def https_certs(tls_pem: str, certs_dir: str) -> str:
    """The certificate option of an HTTPS bind line."""
    return f"crt-list {crt_list(certs_dir)}" if certs_dir else f"crt {tls_pem}"


def challenge_rules(map_dir: str, enabled: bool) -> str:
    if not enabled:
        return "    # no custom domains: no ACME challenges answered"
    return "\n".join([
        "    # ACME HTTP-01 for custom domains (netagent/edge/domainconfig.py): the token's key authorization.",
        f"    http-request set-var(txn.acme) path,regsub(^{CHALLENGE_PREFIX},),map({acme_map(map_dir)}) "
        f"if {{ path_beg {CHALLENGE_PREFIX} }}",
        "    http-request return status 200 content-type text/plain lf-string \"%[var(txn.acme)]\" "
        "hdr Cache-Control no-store if { var(txn.acme) -m found }",
    ])


def custom_domain_rules(map_dir: str, domain_suffix_regex: str, enabled: bool) -> str:
    if not enabled:
        return "    # no custom domains"
    m = domains_map(map_dir)
    return "\n".join([
        "    # A custom domain is routed as the sandbox host it maps to (docs/edge.md, \"Custom domains\").",
        f"    http-request set-var(txn.custom) var(txn.host),map({m})",
        "    http-request set-var(txn.host) var(txn.custom) if { var(txn.custom) -m found }",
        f"    http-request set-var(txn.label) var(txn.host),regsub({domain_suffix_regex},) "
        "if { var(txn.custom) -m found }",
        "    http-request set-var(txn.port) var(txn.label),field(1,-) if { var(txn.custom) -m found }",
        "    http-request set-var(txn.sid) var(txn.label),regsub(^[0-9]+-,) if { var(txn.custom) -m found }",
    ])


def crt_list_text(tls_pem: str, cert_paths: list[str]) -> str:
    """The wildcard first (HAProxy's default certificate for the bind), then the custom ones."""
    return "".join(f"{path}\n" for path in [tls_pem, *sorted(cert_paths)])


def domains_map_text(entries: dict[str, str]) -> str:
    return "".join(f"{host} {target}\n" for host, target in sorted(entries.items()))

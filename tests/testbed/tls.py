"""Throwaway PKI for tests: a CA and certificates it signs, made with openssl."""
from __future__ import annotations

import subprocess
from pathlib import Path

EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, cn: str = "test-ca") -> Path:
    openssl("req", "-x509", *EC, "-days", "1", "-subj", f"/CN={cn}", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    return d / "ca.crt"


def issue(d: Path, name: str, san: str) -> tuple[Path, Path]:
    """A certificate for `san` (e.g. "DNS:*.sbx.test" or "IP:127.0.0.1") signed by d/ca.crt."""
    openssl("req", *EC, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return d / f"{name}.crt", d / f"{name}.key"


def wildcard_pem(d: Path, domain: str) -> tuple[Path, Path]:
    """(CA certificate, one PEM with the *.domain certificate and its key, as HAProxy loads it)."""
    d.mkdir(parents=True, exist_ok=True)
    ca = make_ca(d)
    crt, key = issue(d, "edge", f"DNS:*.{domain}")
    pem = d / "edge.pem"
    pem.write_text(crt.read_text() + key.read_text())
    return ca, pem

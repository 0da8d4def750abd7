"""`netagent edge` runs only the HAProxy control plane: without --haproxy-socket (or
--write-haproxy-config) it is a clear error, not a proxy started on some port."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_edge_without_a_haproxy_socket_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "netagent", "edge", "--registry", f"sqlite:///{tmp_path}/r.db",
                          "--domain", "sbx.cli.test"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "give --haproxy-socket PATH" in out.stderr and "--write-haproxy-config" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "r.db").exists()          # nothing was opened


def test_the_legacy_proxy_options_are_gone() -> None:
    out = subprocess.run([sys.executable, "-m", "netagent", "edge", "--domain", "sbx.cli.test", "--listen",
                          "127.0.0.1:8080"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unrecognized arguments: --listen" in out.stderr, out.stderr


def test_tcp_on_https_writes_the_sni_front(tmp_path: Path) -> None:
    """--tcp-on-https reaches the written config: the HTTPS address belongs to the front."""
    cfg = tmp_path / "haproxy.cfg"
    out = subprocess.run([sys.executable, "-m", "netagent", "edge", "--domain", "sbx.cli.test",
                          "--write-haproxy-config", str(cfg), "--haproxy-socket", str(tmp_path / "admin.sock"),
                          "--map-dir", str(tmp_path / "maps"), "--errors-dir", str(tmp_path / "errors"),
                          "--https-listen", "127.0.0.1:8443", "--tls-pem", "/etc/e/edge.pem", "--tcp-on-https"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = cfg.read_text()
    assert "frontend https_front\n" in text and "    bind 127.0.0.1:8443\n" in text
    assert f"bind unix@{tmp_path}/edge-https.sock accept-proxy ssl" in text

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

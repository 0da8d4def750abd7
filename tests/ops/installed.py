"""`make install` into a scratch root, and running what it installed."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.testbed import sh

PREFIX = "/opt/netagent"
UNITS = ("netagent.service", "netagent-edge-haproxy.service", "netagent-edge.service")
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def make(target: str, root: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["make", "-s", target, f"DESTDIR={root}", f"WHEEL_DIR={root.parent / 'dist'}"],
                         cwd=sh.REPO, capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def venv_python(root: Path) -> Path:
    return root / PREFIX.lstrip("/") / ".venv/bin/python"


def installed(root: Path, *args: str, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed venv's python, run from outside the checkout (so nothing is imported from it)."""
    return subprocess.run([str(venv_python(root)), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**CLEAN_ENV, **(env or {})})

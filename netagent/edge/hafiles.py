"""Write what HAProxy needs before it starts: its config, the shard maps it loads
(created empty; the control plane keeps them current), the flag map (always empty
on disk: a new process is not synced), the 504 error file and the failed-connect
answer pieces (dialfail.py)."""
from __future__ import annotations

import os
from pathlib import Path

from . import dialfail
from .fdlimit import check_maxconn
from .haconfig import EdgeSettings, error_504, render, shard_map, synced_map


def write_haproxy_files(settings: EdgeSettings, config_path: str | Path) -> Path:
    text = render(settings)                       # validates before anything is written
    check_maxconn(settings.maxconn, settings.threads, len(settings.http_listen) + len(settings.https_listen))
    os.makedirs(settings.map_dir, exist_ok=True)
    os.makedirs(settings.errors_dir, exist_ok=True)
    for shard in range(settings.shards):
        path = Path(shard_map(settings.map_dir, shard))
        if not path.exists():
            path.touch()
    _write(Path(synced_map(settings.map_dir)), "")
    _write(Path(settings.errors_dir) / "504.http", error_504())
    _write(Path(settings.errors_dir) / dialfail.MAP_NAME, dialfail.map_text())
    config_path = Path(config_path)
    _write(config_path, text, private=bool(settings.url_signing_key))
    return config_path


def _write(path: Path, text: str, private: bool = False) -> None:
    """Atomically; mode 0600 when the text holds a secret (the URL signing key)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)

"""Write what HAProxy needs before it starts: its config, the shard maps it loads
(created empty; the control plane keeps them current), the flag map (always empty
on disk: a new process is not synced), the 504 error file and the failed-connect
answer pieces (dialfail.py); with custom domains, their maps and the crt-list
(domainconfig.py)."""
from __future__ import annotations

import os
from pathlib import Path

from . import dialfail, domainconfig
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
    if settings.certs_dir:
        _write_custom_domain_files(settings)
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


def _write_custom_domain_files(settings: EdgeSettings) -> None:
    """acme.map empty (a challenge lives only with its order); domains.map kept (the
    control plane writes it); the crt-list with the current wildcard first and the
    custom certificates it already listed whose files exist."""
    os.makedirs(settings.certs_dir, mode=0o700, exist_ok=True)
    _write(Path(domainconfig.acme_map(settings.map_dir)), "")
    domains = Path(domainconfig.domains_map(settings.map_dir))
    if not domains.exists():
        domains.touch()
    listing = Path(domainconfig.crt_list(settings.certs_dir))
    kept = listing.read_text().splitlines()[1:] if listing.exists() else []
    custom = [line.strip() for line in kept if line.strip() and Path(line.strip()).exists()]
    _write(listing, domainconfig.crt_list_text(settings.tls_pem, custom))

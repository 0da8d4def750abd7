"""The config's sources, without validating them: the TOML file and NETAGENT_*
environment overrides, merged into one dict. No pydantic here, so the CLI's
light commands (status, ls) can find the agent's socket without paying for
the full Config (config.py validates this same dict)."""
from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_PATH = Path("/etc/netagent/netagent.toml")
DEFAULT_SOCKET = "/run/netagent/netagent.sock"   # the API socket: the agent, the client, the light CLI


def default_path() -> str | None:
    """$NETAGENT_CONFIG, else /etc/netagent/netagent.toml if it exists, else none
    (embedded defaults)."""
    if env := os.environ.get("NETAGENT_CONFIG"):
        return env
    return str(DEFAULT_PATH) if DEFAULT_PATH.exists() else None


def read(path: str | Path | None = None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The TOML file (if given) with the NETAGENT_* overrides on top."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    return merge(data, env_overrides(environ))


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """NETAGENT_POOL_SIZE=8 -> {"pool_size": "8"}; NETAGENT_GUEST__MTU -> nested."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("NETAGENT_") or key in ("NETAGENT_CONFIG",):
            continue
        path = key[len("NETAGENT_"):].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _coerce_env(value)
    return out


def _coerce_env(value: str) -> Any:
    return json.loads(value) if value.startswith(("[", "{")) else value


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged

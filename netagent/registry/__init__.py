"""The routing registry: where each sandbox's exposed ports are and whether they answer."""
from __future__ import annotations

from .base import NodeIdInUse, Registry, RegistryError
from .ownership import Verdict
from .records import SCHEMA_VERSION, NodeRecord, PortRecord, SandboxRecord

__all__ = ["Registry", "RegistryError", "NodeIdInUse", "Verdict", "NodeRecord", "PortRecord", "SandboxRecord",
           "SCHEMA_VERSION", "open_registry"]


def open_registry(url: str) -> Registry:
    """sqlite:///abs/path.db or redis://host:port/db (also rediss://, unix://)."""
    if url.startswith("sqlite://"):
        from .sqlite import SqliteRegistry
        return SqliteRegistry(url)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisRegistry
        return RedisRegistry(url)
    raise ValueError(f"unsupported registry URL {url!r}: use sqlite:///path or redis://host:port/db")

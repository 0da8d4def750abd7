"""The registry tests use the root conftest's `redis_server` fixture."""
from __future__ import annotations

from tests.testbed.redis_proc import RedisServer

__all__ = ["RedisServer"]

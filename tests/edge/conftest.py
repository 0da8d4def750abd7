"""Fixtures shared by the edge tests: an upstream server and a real SQLite registry."""
from __future__ import annotations

import pytest

from netagent.registry.sqlite import SqliteRegistry

from .helpers import UpstreamServer


@pytest.fixture
async def upstream():
    server = await UpstreamServer().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def registry(tmp_path):
    reg = SqliteRegistry(f"sqlite:///{tmp_path}/registry.db")
    await reg.connect()
    try:
        yield reg
    finally:
        await reg.close()

"""Read the routing registry from a test (a fresh reader each time, as an edge would)."""
from __future__ import annotations

import asyncio

from netagent.registry import SandboxRecord, open_registry


def read_record(url: str, sandbox_id: str) -> SandboxRecord | None:
    async def get() -> SandboxRecord | None:
        reg = open_registry(url)
        try:
            return await reg.get_sandbox(sandbox_id)
        finally:
            await reg.close()
    return asyncio.run(get())

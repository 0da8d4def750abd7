"""The agent's registry publisher against a real SQLite registry (no root)."""
from __future__ import annotations

import asyncio
import time

from netagent.registry import NodeRecord, PortRecord, SandboxRecord, open_registry
from netagent.registry.publisher import RegistryPublisher, SequenceClock


def test_sequence_clock_is_strictly_increasing_and_time_based():
    clock = SequenceClock()
    seqs = [clock.next() for _ in range(1000)]
    assert seqs == sorted(set(seqs))
    assert abs(seqs[0] / 1e6 - time.time()) < 5


async def test_publishes_changes_tombstones_releases_and_reports_refused_writes(tmp_path):
    url = f"sqlite://{tmp_path}/registry.db"
    live = {"a": [PortRecord(3000, "tcp", 20000, True, 1.0, 2.0)], "b": []}

    def record(sid: str, seq: int) -> SandboxRecord | None:
        if sid not in live:
            return None
        return SandboxRecord(sid, "node-1", "198.51.100.2", seq, time.time(), tuple(live[sid]))

    pub = RegistryPublisher(open_registry(url), lambda: NodeRecord("node-1", "198.51.100.2", time.time()),
                            record, lambda: list(live), ttl_s=5, heartbeat_s=1)
    reader = open_registry(url)
    # Another writer holds a newer record of "b": ours is refused, and counted.
    await reader.put_sandbox(SandboxRecord("b", "node-2", "192.0.2.9", 2**52, time.time()), 60)
    await reader.refresh(NodeRecord("node-2", "192.0.2.9", time.time()), [], 60)   # alive: its record is served
    pub.start()
    try:
        async def until(check) -> None:
            deadline = time.monotonic() + 3
            while not await check():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)

        async def a_published() -> bool:
            rec = await reader.get_sandbox("a")
            return rec is not None and rec.port(3000).host_port == 20000
        await until(a_published)
        assert pub.healthy and pub.refused >= 1
        assert (await reader.get_sandbox("b")).node_id == "node-2"
        live_seq = (await reader.get_sandbox("a")).seq

        del live["a"]            # released
        pub.mark("a")

        async def a_gone() -> bool:
            return await reader.get_sandbox("a") is None
        await until(a_gone)
        # Gone as a tombstone, not a delete: a late write from before the release is refused.
        late = SandboxRecord("a", "node-1", "198.51.100.2", live_seq + 1, time.time(),
                             (PortRecord(3000, "tcp", 20000, True, 1.0, 2.0),))
        assert await reader.put_sandbox(late, 60) is False
        assert await reader.get_sandbox("a") is None
    finally:
        await pub.stop()
        await reader.close()


async def test_a_loop_waiting_on_a_busy_event_can_be_cancelled():
    """asyncio.wait_for on 3.11 swallows a cancel racing the event; wait_event must not."""
    from netagent.workers import cancel_task, wait_event

    event = asyncio.Event()

    async def loop() -> None:
        while True:
            event.clear()
            await wait_event(event, 0.0005)

    async def setter() -> None:
        while True:
            event.set()
            await asyncio.sleep(0)

    for _ in range(50):
        task, busy = asyncio.create_task(loop()), asyncio.create_task(setter())
        await asyncio.sleep(0.002)
        await asyncio.wait_for(cancel_task(task), 1.0)
        await cancel_task(busy)

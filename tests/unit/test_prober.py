"""The prober's scheduler with a fake SYN sender (no root, no packets)."""
from __future__ import annotations

import asyncio

from netagent.reachability.prober import Prober
from netagent.reachability.schedule import PortProbe, ProbeSchedule
from netagent.reachability.tcp_syn import ProbeResult


class FakeSyn:
    def __init__(self, answer: ProbeResult) -> None:
        self.answer = answer
        self.sent: list[tuple[str, int]] = []

    def start(self, src_ip: str, dst_ip: str, port: int, timeout: float) -> asyncio.Future[ProbeResult]:
        self.sent.append((dst_ip, port))
        fut: asyncio.Future[ProbeResult] = asyncio.get_running_loop().create_future()
        fut.set_result(self.answer)
        return fut

    def close(self) -> None:
        pass


SCHEDULE = ProbeSchedule(interval_s=0.02, fast_interval_s=0.02, fast_period_s=0, timeout_s=0.01, jitter=0)


async def test_removed_then_re_added_port_keeps_one_probe_chain():
    syn = FakeSyn(ProbeResult(True, "syn-ack", 0.0))
    prober = Prober(syn, SCHEDULE, lambda p: None)   # type: ignore[arg-type]
    prober.start()
    try:
        prober.add(PortProbe("s", 3000, "10.12.0.0", "10.12.0.1"))
        await asyncio.sleep(0.1)
        prober.remove(("s", 3000))
        prober.add(PortProbe("s", 3000, "10.12.0.0", "10.12.0.1"))
        await asyncio.sleep(0.05)
        before = len(syn.sent)
        await asyncio.sleep(0.4)
        rate = (len(syn.sent) - before) / 0.4
        assert 10 <= rate <= 65, rate   # one chain: ~50/s; two chains would be ~100/s
    finally:
        await prober.stop()


async def test_changes_are_reported_once_and_removed_ports_stop():
    syn = FakeSyn(ProbeResult(False, "rst", 0.0))
    changes: list[tuple[str, bool | None]] = []
    prober = Prober(syn, SCHEDULE, lambda p: changes.append((p.sandbox_id, p.reachable)))  # type: ignore[arg-type]
    prober.start()
    try:
        prober.add(PortProbe("s", 3000, "10.12.0.0", "10.12.0.1"))
        await asyncio.sleep(0.1)
        assert changes == [("s", False)]
        syn.answer = ProbeResult(True, "syn-ack", 0.0)
        await asyncio.sleep(0.1)
        assert changes == [("s", False), ("s", True)]
        prober.remove_sandbox("s")
        await asyncio.sleep(0.03)
        sent = len(syn.sent)
        await asyncio.sleep(0.1)
        assert len(syn.sent) == sent
    finally:
        await prober.stop()

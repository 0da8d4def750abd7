"""How deep the warm pool should be: it follows recent demand (pure; the
caller passes the clock).

An idle host keeps `size` warm slots. Allocations seen in the last `window_s`
raise the depth by as many, up to `max_size`, so a burst like the last one is
served from warm slots and a steady rate has a window's worth ready; when
demand stops, the depth falls back to `size` once the window has passed.
Slots are cheap to keep warm (a netns, two links, two small tables) and a
cold build on the request path costs 5-20x a warm allocate.
"""
from __future__ import annotations

from collections import deque


class Demand:
    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def record(self, now: float) -> None:
        self._times.append(now)

    def recent(self, now: float, window_s: float) -> int:
        """Allocations in the last `window_s` seconds (older ones are dropped)."""
        while self._times and self._times[0] <= now - window_s:
            self._times.popleft()
        return len(self._times)

    def target(self, now: float, size: int, max_size: int, window_s: float) -> int:
        """The depth to keep: `size` plus recent demand, within [size, max(size, max_size)]."""
        return min(size + self.recent(now, window_s), max(size, max_size))

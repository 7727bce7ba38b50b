"""The clock seam: everything that reads the time or waits goes through a :class:`Clock`.

Retry schedules, rate windows, leases and daily caps all depend on time. Injecting the clock lets
tests compress minutes into milliseconds (:class:`ScaledClock`) or step time by hand
(:class:`ManualClock`) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time in epoch seconds, and a way to wait on it."""

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """A clock that runs ``factor`` times faster than real time, from ``start`` (default now).

    Used to run throttled campaigns against the emulator in seconds: both sides are given a clock
    with the same factor and start, so a 60-second rate window passes in ``60 / factor`` seconds.
    """

    def __init__(self, factor: float, start: float | None = None) -> None:
        if factor <= 0:
            raise ValueError("factor must be positive")
        self.factor = factor
        self._origin_real = time.monotonic()
        self._origin = time.time() if start is None else start

    def time(self) -> float:
        return self._origin + (time.monotonic() - self._origin_real) * self.factor

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)


class ManualClock:
    """A clock that moves only when told to; ``sleep`` advances it instantly."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

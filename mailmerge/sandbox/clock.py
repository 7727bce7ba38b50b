"""Clocks for the emulator.

Every time-based rule of the sandbox (token lifetimes, throttling windows, Sent Items delay, NDR delay,
latency, hangs) reads one injected clock, so tests can compress minutes into seconds with `ScaledClock`
or jump a day ahead with `ScaledClock.advance` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """What the emulator needs from a clock: epoch seconds and an awaitable sleep on the same scale."""

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time: what `mailmerge run --sandbox` uses."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """A clock that runs `factor` times faster than real time, starting at `start` (default: now).

    `sleep(60)` on a clock with factor 60 takes one real second; `time()` advances 60 seconds per real
    second. `advance(seconds)` jumps forward at once, for rules measured in hours (the 24 h recipient
    window, token expiry).
    """

    def __init__(self, factor: float = 60.0, start: float | None = None) -> None:
        if factor <= 0:
            raise ValueError(f"ScaledClock factor must be positive, got {factor}")
        self.factor = float(factor)
        self._start = time.time() if start is None else float(start)
        self._origin = time.monotonic()
        self._offset = 0.0

    def time(self) -> float:
        return self._start + (time.monotonic() - self._origin) * self.factor + self._offset

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)

    def advance(self, seconds: float) -> None:
        """Jump the clock forward (never backward: windows and expiries assume time only grows)."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        self._offset += seconds

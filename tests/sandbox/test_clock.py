"""Clocks and latency models: what lets tests compress time instead of sleeping."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from mailmerge.sandbox import Latency, ScaledClock, SystemClock


def test_scaled_clock_runs_faster_and_jumps() -> None:
    clock = ScaledClock(factor=100, start=1_000_000.0)
    started = time.monotonic()
    asyncio.run(clock.sleep(20))  # 0.2 s of real time
    real = time.monotonic() - started
    assert 0.15 <= real < 1.5
    assert clock.time() - 1_000_000.0 == pytest.approx(real * 100, rel=0.2)
    before = clock.time()
    clock.advance(86_400)
    assert clock.time() - before >= 86_400
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="positive"):
        ScaledClock(factor=0)


def test_system_clock_is_real_time() -> None:
    assert SystemClock().time() == pytest.approx(time.time(), abs=1)


def test_latency_models() -> None:
    rng = random.Random(1)
    assert Latency.fixed(0.2).sample(rng) == 0.2 and Latency().is_zero
    uniform = [Latency.uniform(0.1, 0.3).sample(rng) for _ in range(200)]
    assert min(uniform) >= 0.1 and max(uniform) <= 0.3
    exponential = [Latency.exponential(0.05).sample(rng) for _ in range(2000)]
    assert sum(exponential) / len(exponential) == pytest.approx(0.05, rel=0.15)

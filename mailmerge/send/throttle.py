"""Per-mailbox limits, kept on the client side so a steady run stays under them instead of bouncing off 429s.

Exchange Online counts messages per mailbox over a rolling minute and recipients over a rolling
24 hours, and Graph runs at most four requests per mailbox at once. :class:`RateWindow` mirrors the
rolling count (a token bucket with a burst would let 2x through in the first minute and earn a 429
storm). Exchange counts a message when it accepts it, which is some time after we send it; so a
slot is first reserved at send time and then moved to the (estimated) acceptance time once the
answer is in: the window never frees a slot before Exchange's does. :class:`MailboxThrottle` adds the
pause a ``Retry-After`` or a quota imposes.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass


class RateWindow:
    """At most ``limit`` events in any ``window`` seconds; ``limit=None`` means unlimited."""

    def __init__(self, limit: int | None, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._events: list[float] = []  # sorted event times

    def _expire(self, now: float) -> None:
        cut = bisect_left(self._events, now - self.window + 1e-9)
        if cut:
            del self._events[:cut]

    def available(self, now: float, wanted: int) -> int:
        """How many of ``wanted`` events may happen now."""
        if self.limit is None:
            return wanted
        self._expire(now)
        return max(0, min(wanted, self.limit - len(self._events)))

    def next_free_at(self, now: float) -> float:
        """The earliest time one more event is allowed."""
        if self.limit is None:
            return now
        self._expire(now)
        if len(self._events) < self.limit:
            return now
        return self._events[len(self._events) - self.limit] + self.window

    def take(self, now: float, count: int) -> None:
        """Reserve ``count`` slots at ``now`` (the moment the messages are sent)."""
        if self.limit is not None:
            for _ in range(count):
                insort(self._events, now)

    def settle(self, reserved_at: float, accepted_at: Sequence[float | None]) -> None:
        """Move slots reserved at ``reserved_at`` to when each message was accepted; None gives the
        slot back (the message never reached Exchange: refused token, failed dependency)."""
        if self.limit is None:
            return
        for when in accepted_at:
            index = bisect_left(self._events, reserved_at)
            if index < len(self._events) and self._events[index] == reserved_at:
                del self._events[index]
            if when is not None:
                insort(self._events, when)

    def fill(self, now: float) -> None:
        """Treat the window as full from ``now``: the server said we are over, so believe it."""
        if self.limit is not None:
            for _ in range(max(0, self.limit - len(self._events))):
                insort(self._events, now)


@dataclass
class DailyCap:
    """Recipients left in the rolling 24 hours; ``used`` is refreshed from the database."""

    limit: int | None
    used: int = 0
    refreshed_at: float = float("-inf")

    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


@dataclass
class MailboxThrottle:
    """Everything that decides when one mailbox may send next."""

    rate: RateWindow
    daily: DailyCap
    paused_until: float = 0.0
    pause_reason: str | None = None

    def pause(self, until: float, reason: str) -> None:
        if until > self.paused_until:
            self.paused_until = until
            self.pause_reason = reason

    def ready_at(self, now: float) -> float:
        """When the next message may go, considering pauses and the rate window."""
        return max(self.paused_until, self.rate.next_free_at(now))

    def allowance(self, now: float, wanted: int) -> int:
        """How many messages (one recipient each) may go right now."""
        if now < self.paused_until:
            return 0
        allowed = self.rate.available(now, wanted)
        remaining = self.daily.remaining()
        return allowed if remaining is None else min(allowed, remaining)

    def took(self, now: float, count: int) -> None:
        self.rate.take(now, count)
        self.daily.used += count

    def settle(self, reserved_at: float, accepted_at: Sequence[float | None]) -> None:
        """Record when the messages sent at ``reserved_at`` were accepted (None: never executed)."""
        self.rate.settle(reserved_at, accepted_at)
        self.daily.used = max(0, self.daily.used - sum(when is None for when in accepted_at))

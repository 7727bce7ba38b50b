"""Emulated Graph and Exchange Online limits, measured on the injected clock.

Graph's limits are per app per mailbox (`AppKey` = client id + mailbox id): concurrent requests,
requests per 10 minutes, upload bytes per 5 minutes. Exchange's sending limits belong to the mailbox
whatever app sends: messages per rolling minute, recipients per rolling 24 hours. Crossing the daily
recipient limit blocks the mailbox for 24 hours, answered with 403 ErrorQuotaExceeded (see
docs/sandbox.md for why not 429).

Checks and their bookkeeping run without an await in between, so on the single server loop they are
atomic.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .profile import Limits
from .wire import iso

AppKey = tuple[str, str]
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a request may not proceed: the answer to give instead."""

    status: int
    code: str
    message: str
    retry_after: float | None


class _Window:
    """Amounts inside a rolling time window; `sum` is kept current as old entries fall out."""

    __slots__ = ("entries", "span", "sum")

    def __init__(self, span: float) -> None:
        self.span = span
        self.entries: deque[tuple[float, int]] = deque()
        self.sum = 0

    def expire(self, now: float) -> None:
        entries, horizon = self.entries, now - self.span
        while entries and entries[0][0] <= horizon:
            self.sum -= entries.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        self.entries.append((now, amount))
        self.sum += amount

    def wait_for_room(self, now: float, limit: int, amount: int) -> float:
        """Seconds until `amount` more fits under `limit`."""
        total = self.sum
        for t, n in self.entries:
            total -= n
            if total + amount <= limit:
                return t + self.span - now
        return self.span


class Throttle:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._in_flight: dict[AppKey, int] = {}
        self._requests: dict[AppKey, _Window] = {}
        self._uploads: dict[AppKey, _Window] = {}
        self._messages: dict[str, _Window] = {}
        self._recipients: dict[str, _Window] = {}
        self._blocked_until: dict[str, float] = {}

    # -- per app per mailbox ---------------------------------------------------------------------
    def enter(self, key: AppKey) -> Verdict | None:
        """Take a concurrency slot (give it back with `leave`), or say why not."""
        limit = self.limits.concurrent_requests
        running = self._in_flight.get(key, 0)
        if limit is not None and running >= limit:
            return Verdict(
                429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", 1.0
            )
        self._in_flight[key] = running + 1
        return None

    def leave(self, key: AppKey) -> None:
        running = self._in_flight.get(key, 0) - 1
        if running > 0:
            self._in_flight[key] = running
        else:
            self._in_flight.pop(key, None)

    def request(self, key: AppKey, now: float) -> Verdict | None:
        """Count one request against the 10-minute budget, or say when there is room again."""
        limit = self.limits.requests_per_10_minutes
        if limit is None:
            return None
        window = self._requests.get(key) or self._requests.setdefault(key, _Window(600.0))
        window.expire(now)
        if window.sum + 1 > limit:
            return Verdict(
                429,
                "ApplicationThrottled",
                f"Application is over its limit of {limit} requests per 10 minutes for this mailbox.",
                window.wait_for_room(now, limit, 1),
            )
        window.add(now, 1)
        return None

    def upload(self, key: AppKey, size: int, now: float) -> Verdict | None:
        """Count uploaded bytes against the 5-minute budget, or say when there is room again."""
        limit = self.limits.upload_bytes_per_5_minutes
        if limit is None:
            return None
        window = self._uploads.setdefault(key, _Window(300.0))
        window.expire(now)
        if window.sum + size > limit:
            return Verdict(
                429,
                "ApplicationThrottled",
                f"Application is over its IncomingBytes limit of {limit} bytes per 5 minutes.",
                window.wait_for_room(now, limit, size),
            )
        window.add(now, size)
        return None

    # -- per mailbox (Exchange sending limits) ---------------------------------------------------
    def message(self, mailbox: str, recipients: int, now: float) -> Verdict | None:
        """Check whether the mailbox may submit one more message now; does not record it."""
        blocked = self._blocked_until.get(mailbox)
        if blocked is not None:
            if now < blocked:
                return self._quota_verdict(blocked)
            del self._blocked_until[mailbox]
        per_minute = self.limits.messages_per_minute
        if per_minute is not None:
            window = self._messages.setdefault(mailbox, _Window(60.0))
            window.expire(now)
            if window.sum + 1 > per_minute:
                return Verdict(
                    429,
                    "TooManyRequests",
                    f"The mailbox has submitted {per_minute} messages in the last minute, its limit. "
                    "Wait before sending more.",
                    window.wait_for_room(now, per_minute, 1),
                )
        per_day = self.limits.recipients_per_24h
        if per_day is not None:
            window = self._recipients.setdefault(mailbox, _Window(DAY))
            window.expire(now)
            if window.sum + recipients > per_day:
                self._blocked_until[mailbox] = now + DAY
                return self._quota_verdict(now + DAY)
        return None

    def record_message(self, mailbox: str, recipients: int, now: float) -> None:
        if self.limits.messages_per_minute is not None:
            self._messages.setdefault(mailbox, _Window(60.0)).add(now, 1)
        if self.limits.recipients_per_24h is not None:
            self._recipients.setdefault(mailbox, _Window(DAY)).add(now, recipients)

    def _quota_verdict(self, until: float) -> Verdict:
        stamp = iso(until)
        return Verdict(
            403,
            "ErrorQuotaExceeded",
            f"The mailbox has exceeded its limit of {self.limits.recipients_per_24h} recipients in "
            f"24 hours and is blocked from sending until {stamp}.",
            None,
        )

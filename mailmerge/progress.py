"""The live view of a run: per mailbox sent, failed, retrying, waiting, and the overall rate and ETA.

On a terminal it is a rich ``Live`` table; when stdout is a pipe or a file it prints a plain line
every few seconds instead, so logs stay readable.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mailmerge.clock import Clock
from mailmerge.send.engine import RunStats

PLAIN_EVERY_SECONDS = 5.0


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ProgressView:
    """Shows a run's :class:`RunStats` until told to stop."""

    def __init__(self, console: Console, stats: RunStats, *, to_send: int, clock: Clock) -> None:
        self.console = console
        self.stats = stats
        self.to_send = to_send
        self.clock = clock

    def _rate_and_eta(self) -> tuple[float, str]:
        elapsed = max(1e-6, self.clock.time() - self.stats.started_at)
        rate = self.stats.sent / elapsed
        left = max(0, self.to_send - self.stats.sent - self.stats.failed)
        eta = _duration(left / rate) if rate > 0 and left else ("done" if not left else "—")
        return rate * 60, eta

    def renderable(self) -> Group:
        table = Table(title="mailmerge", expand=False)
        for column in ("mailbox", "sent", "failed", "retrying", "unknown", "429s", "in flight", "state"):
            table.add_column(column, justify="left" if column in {"mailbox", "state"} else "right")
        now = self.clock.time()
        for mailbox, m in self.stats.mailboxes.items():
            if m.stopped:
                state = Text(f"stopped: {m.stopped}", style="red")
            elif m.waiting_until > now:
                state = Text(
                    f"waiting {_duration(m.waiting_until - now)} ({m.waiting_reason})", style="yellow"
                )
            else:
                state = Text("sending" if m.in_flight else "idle", style="green" if m.in_flight else "dim")
            counters = (m.sent, m.failed, m.retried, m.unknown, m.throttled, m.in_flight)
            table.add_row(mailbox, *(str(n) for n in counters), state)
        per_minute, eta = self._rate_and_eta()
        done = self.stats.sent + self.stats.failed
        line = Text(f"{done}/{self.to_send} settled · {per_minute:.0f} msg/min · ETA {eta}")
        return Group(table, line)

    def plain_line(self) -> str:
        per_minute, eta = self._rate_and_eta()
        waiting = [m for m, s in self.stats.mailboxes.items() if s.waiting_until > self.clock.time()]
        extra = f" · waiting: {', '.join(waiting)}" if waiting else ""
        return (
            f"sent {self.stats.sent}, failed {self.stats.failed} of {self.to_send} · "
            f"{per_minute:.0f} msg/min · ETA {eta}{extra}"
        )

    async def show(self, finished: asyncio.Event) -> None:
        """Refresh until ``finished`` is set (uses real time: it is for people)."""
        if self.console.is_terminal:
            with Live(self.renderable(), console=self.console, refresh_per_second=4, transient=False) as live:
                while not finished.is_set():
                    with suppress(TimeoutError):
                        await asyncio.wait_for(finished.wait(), 0.25)
                    live.update(self.renderable())
        else:
            while not finished.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), PLAIN_EVERY_SECONDS)
                if not finished.is_set():
                    self.console.print(self.plain_line(), highlight=False)

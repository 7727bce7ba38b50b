"""What a person watching a run sees: per-mailbox counters, waits, rate and ETA."""

from __future__ import annotations

import asyncio

from rich.console import Console

from mailmerge.clock import ManualClock
from mailmerge.progress import ProgressView
from mailmerge.send.engine import MailboxStats, RunStats


def _stats(clock: ManualClock) -> RunStats:
    return RunStats(
        mailboxes={
            "a@contoso.example": MailboxStats(
                sent=40,
                failed=2,
                throttled=3,
                waiting_until=clock.time() + 90,
                waiting_reason="throttled by Graph (ApplicationThrottled)",
            ),
            "b@contoso.example": MailboxStats(
                sent=20, in_flight=4, stopped="ErrorAccessDenied: Access is denied."
            ),
        },
        started_at=clock.time() - 120,
    )


def test_terminal_view_shows_each_mailbox_and_the_eta() -> None:
    clock = ManualClock()
    console = Console(record=True, width=160, force_terminal=True)
    console.print(ProgressView(console, _stats(clock), to_send=122, clock=clock).renderable())
    screen = console.export_text()
    assert "waiting 1m30s (throttled by Graph (ApplicationThrottled))" in screen
    assert "stopped: ErrorAccessDenied" in screen
    assert "62/122 settled · 30 msg/min · ETA 2m00s" in screen


def test_plain_lines_when_not_a_terminal() -> None:
    clock = ManualClock()
    console = Console(record=True, width=200, force_terminal=False)
    view = ProgressView(console, _stats(clock), to_send=122, clock=clock)
    finished = asyncio.Event()

    async def watch() -> None:
        task = asyncio.create_task(view.show(finished))
        await asyncio.sleep(0)
        finished.set()
        await task

    asyncio.run(watch())
    line = view.plain_line()
    assert line == "sent 60, failed 2 of 122 · 30 msg/min · ETA 2m00s · waiting: a@contoso.example"

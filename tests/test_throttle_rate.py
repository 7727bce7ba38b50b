"""Each mailbox runs at its limit, measured on the emulator's own clock, with time compressed 60x."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from mailmerge import sandbox as emulator
from mailmerge.campaign import load_campaign
from mailmerge.clock import ScaledClock
from mailmerge.store import Status
from tests.conftest import point_at
from tests.test_exactly_once import CLIENT_ID, SECRET, TENANT, _rows, send_through

FACTOR = 60.0
PER_MINUTE = 30
MAILBOXES = ("a@contoso.example", "b@contoso.example", "c@contoso.example")


def test_pool_runs_each_mailbox_at_its_rate_without_a_429_storm(make_campaign, tmp_path: Path) -> None:
    start = time.time()
    limits = emulator.Limits(
        messages_per_minute=PER_MINUTE,
        concurrent_requests=4,
        requests_per_10_minutes=None,
        recipients_per_24h=None,
    )
    sandbox = emulator.Sandbox(
        emulator.Profile(limits=limits, latency=emulator.Latency.uniform(0.0, 0.3)),
        clock=emulator.ScaledClock(FACTOR, start=start),
    )
    sandbox.start()
    try:
        sandbox.register_app(tenant=TENANT, client_id=CLIENT_ID, secret=SECRET)
        for mailbox in MAILBOXES:
            sandbox.add_mailbox(mailbox)
        per_mailbox = 150
        path = make_campaign(
            _rows(per_mailbox * len(MAILBOXES)),
            mailboxes=MAILBOXES,
            limits=f"messages_per_minute = {PER_MINUTE}",
        )
        point_at(path, sandbox)
        counts = send_through(sandbox, load_campaign(path), clock=ScaledClock(FACTOR, start=start))
        assert counts[Status.SENT] == per_mailbox * len(MAILBOXES)
        accepted: dict[str, list[float]] = defaultdict(list)
        for message in sandbox.delivered():
            accepted[message.mailbox].append(message.accepted_at)
        for mailbox in MAILBOXES:
            times = sorted(accepted[mailbox])
            assert len(times) >= per_mailbox - 10  # the pool shares the work out evenly
            # Never more than the limit in any rolling minute ...
            assert (
                max(sum(1 for t in times[i:] if t < times[i] + 60) for i in range(len(times))) <= PER_MINUTE
            )
            # ... and close to it: every whole minute from the first send carried a full minute's worth.
            minutes = len(times) // PER_MINUTE - 1
            carried = sum(1 for t in times if t < times[0] + 60 * minutes)
            assert carried / (PER_MINUTE * minutes) >= 0.97, (mailbox, carried, minutes)
        throttled = [e for e in sandbox.request_log() if e["status"] == 429]
        assert len(throttled) <= 3, throttled
    finally:
        sandbox.stop()

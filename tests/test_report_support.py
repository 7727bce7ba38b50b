"""Campaign states for the report, status and bounce tests, built through the store's own API.

No tests here: the builders give every other ``test_report_*`` module a campaign in which every
status occurs and recipient data tries formula and HTML injection.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from mailmerge.clock import ManualClock
from mailmerge.recipients import Recipient
from mailmerge.store import Bounce, NewRecipient, Outcome, Status, Store

START = 1_800_000_000.0
MAILBOXES = ("news@contoso.example", "news2@contoso.example")
#: Cell values a spreadsheet would run, and markup a browser would: each must come out inert.
NASTY = (
    '=HYPERLINK("http://evil.example","click")',
    "+1+2",
    "-3+4",
    "@SUM(A1:A9)",
    "\tTabbed",
    "\rReturned",
    "<script>alert('x')</script>",
    'Zoë & "Ünïcødé" <b>bold</b>',
)


def person(index: int) -> Recipient:
    email = f"p{index}@fabrikam.example"
    name = NASTY[index % len(NASTY)] if index % 3 == 0 else f"Person {index}"
    return Recipient(
        row=index + 2,
        key=email,
        email=email,
        name=name,
        fields={"email": email, "name": name, "city": NASTY[(index + 1) % len(NASTY)], "zip": "0123"},
    )


def index_of(email: str) -> int:
    return int(email.split("@")[0][1:])


def outcome_for(index: int, rid: int, now: float) -> Outcome:
    if index % 9 == 4:
        return Outcome(rid, Status.FAILED, "ErrorInvalidRecipients", "Recipient '<b>p</b>' is not resolved.")
    if index % 13 == 5:
        return Outcome(rid, Status.UNKNOWN, "HTTP504", "Gateway Timeout", retry_at=now + 30)
    if index % 17 == 8:
        return Outcome(rid, Status.PENDING, "TooManyRequests", "slow down", retry_at=now + 3600)
    return Outcome(rid, Status.SENT)


def build_campaign(store: Store, clock: ManualClock, *, name: str = "test", rows: int = 40) -> int:
    """A campaign in which every status occurs; returns its id."""
    campaign_id = store.campaign_id(name)
    assert campaign_id is not None
    entries: list[Recipient | NewRecipient] = []
    for index in range(rows):
        recipient = person(index)
        if index % 10 == 3:
            entries.append(NewRecipient(recipient, Status.INVALID, "column 'email': not an address"))
        elif index % 10 == 7:
            entries.append(NewRecipient(recipient, Status.SUPPRESSED, "on the suppression list"))
        elif index == 11:
            entries.append(NewRecipient(recipient, Status.DUPLICATE, "the same key as row 3"))
        else:
            entries.append(recipient)
    store.import_recipients(campaign_id, entries)
    turn = 0
    while claimed := store.claim(campaign_id, MAILBOXES[turn % 2], 5, worker="w", lease_seconds=60):
        turn += 1
        clock.advance(61)
        outcomes = [outcome_for(index_of(c.email), c.id, clock.time()) for c in claimed]
        store.record(campaign_id, outcomes, worker="w")
    sent = [r for r in store.iter_report(campaign_id, statuses=[Status.SENT])]
    clock.advance(600)
    store.record_bounces(
        campaign_id,
        [
            Bounce(
                sent[0]["id"], True, "5.1.1", "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found", clock.time()
            ),
            Bounce(sent[1]["id"], True, "5.7.1", "550 5.7.1 =cmd|' /C calc'!A0 blocked", clock.time()),
            Bounce(sent[2]["id"], False, "4.4.7", "550 4.4.7 QUEUE.Expired; message expired", clock.time()),
        ],
    )
    return campaign_id


def new_store(path: Path, clock: ManualClock | None = None) -> tuple[Store, ManualClock]:
    clock = clock or ManualClock(START)
    return Store(f"sqlite:///{path}", clock=clock), clock


def database_rows(db: Path, campaign_id: int) -> list[dict[str, Any]]:
    """The recipients table as sqlite3 reads it, independent of the store's code."""
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "select * from recipients where campaign_id = ? order by id", (campaign_id,)
        ).fetchall()
    return [dict(row) for row in rows]

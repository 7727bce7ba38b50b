"""Where a campaign stands (``mailmerge status``) and what a database holds (``mailmerge list``).

Everything here is read from aggregate queries on indexes, so it answers as fast for a million
recipients as for ten: counts per status and per mailbox, each mailbox's use of its rolling 24-hour
recipient limit, retries and reconciliations waiting for their time, and an estimate of when the
campaign will be finished at the configured limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailmerge.campaign import Campaign
from mailmerge.clock import Clock, SystemClock
from mailmerge.errors import StoreError
from mailmerge.report import iso
from mailmerge.runner import campaign_id_of
from mailmerge.store import OUTSTANDING, Status, Store

DAY = 86_400.0
#: Exchange Online's own limit when the campaign sets no messages_per_minute.
EXCHANGE_MESSAGES_PER_MINUTE = 30.0


@dataclass(frozen=True)
class MailboxStatus:
    """One sending mailbox: its recipients by status and its rolling 24-hour recipient quota."""

    mailbox: str
    counts: dict[Status, int]
    daily_limit: int | None
    used_24h: int  # recipients addressed from this mailbox in the last 24 h, by every campaign here
    left_24h: int | None
    frees_at: float | None  # when the oldest of those leaves the window (only when the quota is used up)

    def to_json(self) -> dict[str, Any]:
        return {
            "mailbox": self.mailbox,
            "counts": {s.value: n for s, n in self.counts.items()},
            "daily_limit": self.daily_limit,
            "used_24h": self.used_24h,
            "left_24h": self.left_24h,
            "frees_at": iso(self.frees_at),
        }


@dataclass(frozen=True)
class CampaignStatus:
    """A campaign at one moment."""

    campaign: str
    at: float
    counts: dict[Status, int]
    mailboxes: list[MailboxStatus]
    retries_waiting: int  # pending recipients whose next attempt is in the future
    next_retry_at: float | None
    unknown_waiting: int  # unknown recipients whose next Sent Items check is in the future
    next_check_at: float | None
    reconciles: bool  # whether unknowns are settled by looking in Sent Items (save_to_sent_items)
    remaining: int
    finish_at: float | None
    finish_basis: str

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "at": iso(self.at),
            "total": self.total,
            "counts": {s.value: n for s, n in self.counts.items()},
            "mailboxes": [m.to_json() for m in self.mailboxes],
            "retries": {"waiting": self.retries_waiting, "next_at": iso(self.next_retry_at)},
            "unknown": {
                "total": self.counts[Status.UNKNOWN],
                "waiting": self.unknown_waiting,
                "next_check_at": iso(self.next_check_at),
                "settled_by": "sent-items" if self.reconciles else "your decision (resume --assume-…)",
            },
            "estimate": {
                "remaining": self.remaining,
                "finish_at": iso(self.finish_at),
                "basis": self.finish_basis,
            },
        }


def estimate_finish(
    remaining: int,
    now: float,
    *,
    per_minute: list[float],
    left: list[int | None],
    daily: list[int | None],
) -> tuple[float | None, str]:
    """When ``remaining`` recipients will be sent from mailboxes that each send ``per_minute`` messages
    a minute and have ``left`` of a ``daily`` recipient limit (None: no limit).

    An estimate: one recipient per message, no errors, and once today's quota is used the rolling
    24-hour window lets through ``daily`` recipients per mailbox per day, spread evenly.
    """
    if remaining <= 0:
        return None, "nothing left to send"
    if not per_minute:
        return None, "no sending mailbox"
    rate = sum(per_minute) / 60.0  # messages a second
    basis = f"{len(per_minute)} mailbox(es) at {60 * rate:g} messages/minute in all"
    if any(limit is None for limit in daily):
        return now + remaining / rate, basis
    today = sum(max(0, n or 0) for n in left)
    per_day = sum(limit or 0 for limit in daily)
    if remaining <= today:
        return now + remaining / rate, basis
    days = (remaining - today) / per_day
    basis += f"; the 24-hour limit of {per_day:,} recipients in all binds (about {days:.1f} more days)"
    return now + today / rate + max(days * DAY, (remaining - today) / rate), basis


def _lifted(value: Any) -> Any:
    """A ``[limits]`` value, None when the campaign lifts the limit (``"unlimited"``, or no value)."""
    return None if value in (None, "unlimited") else value


def campaign_status(campaign: Campaign, store: Store, *, clock: Clock | None = None) -> CampaignStatus:
    """Where ``campaign`` stands now."""
    now = (clock or SystemClock()).time()
    campaign_id = campaign_id_of(campaign, store)
    counts = store.counts(campaign_id)
    by_mailbox = store.counts_by_mailbox(campaign_id)
    limits = campaign.settings.limits
    daily_limit = _lifted(limits.daily_recipients)
    names = list(dict.fromkeys([*campaign.mailboxes, *by_mailbox]))
    mailboxes = []
    for name in names:
        used = int(store.recipients_in_window(name, now - DAY))
        left = None if daily_limit is None else max(0, int(daily_limit) - used)
        frees_at = None
        if left == 0:
            oldest = store.window_started_at(name, now - DAY)
            frees_at = oldest + DAY if oldest is not None else None
        mailboxes.append(
            MailboxStatus(
                mailbox=name,
                counts=by_mailbox.get(name, dict.fromkeys(Status, 0)),
                daily_limit=None if daily_limit is None else int(daily_limit),
                used_24h=used,
                left_24h=left,
                frees_at=frees_at,
            )
        )
    retries, next_retry = store.waiting(campaign_id, Status.PENDING, now)
    unknown, next_check = store.waiting(campaign_id, Status.UNKNOWN, now)
    remaining = sum(counts[s] for s in OUTSTANDING)
    senders = [m for m in mailboxes if m.mailbox in campaign.mailboxes]
    rate = float(_lifted(limits.messages_per_minute) or EXCHANGE_MESSAGES_PER_MINUTE)
    finish_at, basis = estimate_finish(
        remaining,
        now,
        per_minute=[rate] * len(senders),
        left=[m.left_24h for m in senders],
        daily=[m.daily_limit for m in senders],
    )
    if next_retry is not None and finish_at is not None and remaining == retries:
        finish_at = max(finish_at, next_retry)
    return CampaignStatus(
        campaign=campaign.name,
        at=now,
        counts=counts,
        mailboxes=mailboxes,
        retries_waiting=retries,
        next_retry_at=next_retry,
        unknown_waiting=unknown,
        next_check_at=next_check,
        reconciles=campaign.settings.sender.save_to_sent_items,
        remaining=remaining,
        finish_at=finish_at,
        finish_basis=basis,
    )


@dataclass(frozen=True)
class CampaignProgress:
    """One campaign of a database, for ``mailmerge list``."""

    name: str
    created_at: float
    counts: dict[Status, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def outstanding(self) -> int:
        return sum(self.counts[s] for s in OUTSTANDING)

    @property
    def done_share(self) -> float:
        """The share of recipients settled one way or another (nothing left to do for them)."""
        return 1.0 if not self.total else (self.total - self.outstanding) / self.total

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created_at": iso(self.created_at),
            "total": self.total,
            "outstanding": self.outstanding,
            "done": round(self.done_share, 4),
            "counts": {s.value: n for s, n in self.counts.items()},
        }


def database_url(database: str) -> str:
    """A SQLAlchemy URL as given, or the URL of an existing SQLite file."""
    if "://" in database:
        return database
    path = Path(database).expanduser()
    if not path.is_file():
        raise StoreError(
            f"no database file {path}",
            hint="give the campaign's .db file (beside its campaign file) or a SQLAlchemy URL",
        )
    return f"sqlite:///{path.resolve()}"


def list_campaigns(database: str) -> list[CampaignProgress]:
    """Every campaign recorded in ``database`` (a SQLAlchemy URL or a .db path), oldest first."""
    url = database_url(database)
    if not Store.holds_state(url):
        raise StoreError(
            "this database holds no mailmerge campaigns",
            context=database,
            hint="give the .db file that `mailmerge run` created beside the campaign file",
        )
    store = Store(url)
    try:
        return [
            CampaignProgress(name=c["name"], created_at=c["created_at"], counts=c["counts"])
            for c in store.campaign_list()
        ]
    finally:
        store.close()


def find_databases(folder: Path) -> list[str]:
    """The ``.db`` files in ``folder`` that hold mailmerge state (others are left alone, unopened
    for writing)."""
    found = []
    for path in sorted(folder.glob("*.db")):
        try:
            if Store.holds_state(f"sqlite:///{path.resolve()}"):
                found.append(str(path))
        except StoreError:
            continue
    return found

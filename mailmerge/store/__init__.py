"""The state database: the one package that owns SQL.

Every recipient of every campaign is a row whose ``status`` follows a small state machine; every
transition happens inside a transaction together with a row in ``events``, so the database alone
says what happened, whatever happened to the process. Work is claimed through the database with a
lease (owner + expiry), never only in memory, so several workers — on PostgreSQL later — can share a
campaign without sending twice::

    pending ──claim──▶ sending ──202──────────────────▶ sent ──hard NDR──▶ bounced
       ▲                  │ ──permanent 4xx───────────▶ failed ──retry-failed──▶ pending
       │                  │ ──not executed (424, 401)─▶ pending
       │                  └─ maybe delivered (5xx, timeout, reset, 429, crash) ─▶ unknown
       └──── not in Sent Items after the grace period ◀── unknown ──found in Sent Items──▶ sent

    invalid · suppressed · duplicate: recorded at import, never sent

The schema lives in :mod:`mailmerge.store.schema`, the read side for reports in
:mod:`mailmerge.store.reporting`; this module holds the transitions. Times are epoch seconds.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Engine,
    Table,
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from mailmerge.clock import Clock, SystemClock
from mailmerge.errors import StoreError
from mailmerge.recipients import Recipient
from mailmerge.store.reporting import Reporting
from mailmerge.store.schema import (
    _CLAIM,
    _CLAIM_UNKNOWN,
    _INSERT_EVENT,
    _RECORD,
    OUTSTANDING,
    TRANSITIONS,
    Status,
    campaigns,
    events,
    metadata,
    recipients,
    safe_url,
)

__all__ = [
    "OUTSTANDING",
    "TRANSITIONS",
    "Bounce",
    "ClaimedRecipient",
    "NewRecipient",
    "Outcome",
    "Status",
    "Store",
    "new_worker_id",
]


@dataclass(frozen=True, slots=True)
class ClaimedRecipient:
    """A recipient this worker holds the lease on, with what it needs to build the message."""

    id: int
    row: int
    key: str
    email: str
    name: str | None
    fields: dict[str, str]
    tag: str
    attempts: int
    mailbox: str
    last_attempt_at: float

    def as_recipient(self) -> Recipient:
        """The row as the renderer takes it."""
        return Recipient(row=self.row, key=self.key, email=self.email, name=self.name, fields=self.fields)

    @classmethod
    def from_row(cls, row: Any, mailbox: str) -> ClaimedRecipient:
        """Build one from a row of :data:`~mailmerge.store.schema.CLAIMED_COLUMNS`."""
        return cls(
            id=row.id,
            row=row.row,
            key=row.key,
            email=row.email,
            name=row.name,
            fields=json.loads(row.fields),
            tag=row.tag,
            attempts=row.attempts,
            mailbox=mailbox,
            last_attempt_at=row.last_attempt_at or 0.0,
        )


@dataclass(frozen=True, slots=True)
class NewRecipient:
    """A row of the list as it enters the store: pending, or recorded as never to be sent and why."""

    recipient: Recipient
    status: Status = Status.PENDING
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one attempt (or one reconciliation) for one recipient."""

    recipient_id: int
    status: Status
    code: str | None = None
    message: str | None = None
    retry_at: float | None = None
    attempted: bool = True
    sent_at: float | None = None
    recipient_count: int | None = None  # To + Cc + Bcc of the message sent, when known


@dataclass(frozen=True, slots=True)
class Bounce:
    """A non-delivery report matched to a recipient: hard (5.x.x) bounces, soft (4.x.x) is recorded only."""

    recipient_id: int
    hard: bool
    code: str | None  # the enhanced status code, e.g. "5.1.1"
    diagnostic: str
    at: float  # when the report arrived


def new_worker_id() -> str:
    """A lease owner name that says which host and process holds a lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_dead(owner: str | None) -> bool:
    """True when ``owner`` was a process on this host that no longer runs (a crash or ``kill -9``)."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Store(Reporting):
    """Campaign state in any SQLAlchemy database (SQLite by default, PostgreSQL for many workers)."""

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        try:
            self.engine: Engine = create_engine(url)
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _configure_sqlite)
            metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open the state database: {exc.__class__.__name__}", context=safe_url(url)
            ) from exc

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table: Table) -> Any:
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        if self.engine.dialect.name == "sqlite":
            return sqlite.insert(table)
        return insert(table)

    # -- campaigns and import ------------------------------------------------------------------

    def campaign_id(self, name: str, *, create: bool = True) -> int | None:
        """The id of the campaign called ``name``, created on first use."""
        with self.engine.begin() as conn:
            found = conn.execute(select(campaigns.c.id).where(campaigns.c.name == name)).scalar()
            if found is not None or not create:
                return found
            statement = self._insert(campaigns).values(name=name, created_at=self.clock.time())
            if hasattr(statement, "on_conflict_do_nothing"):
                statement = statement.on_conflict_do_nothing(index_elements=["name"])
            conn.execute(statement)
            return conn.execute(select(campaigns.c.id).where(campaigns.c.name == name)).scalar_one()

    def import_recipients(self, campaign_id: int, batch: Sequence[Recipient | NewRecipient]) -> int:
        """Add recipients not yet known (by key); returns how many were new. Idempotent.

        A plain :class:`Recipient` enters as pending; a :class:`NewRecipient` may enter as invalid,
        suppressed or duplicate with its reason, so the report accounts for every row of the list.
        """
        if not batch:
            return 0
        now = self.clock.time()
        entries = [entry if isinstance(entry, NewRecipient) else NewRecipient(entry) for entry in batch]
        rows = [
            {
                "campaign_id": campaign_id,
                "key": e.recipient.key,
                "row": e.recipient.row,
                "email": e.recipient.email,
                "name": e.recipient.name,
                "fields": json.dumps(e.recipient.fields, ensure_ascii=False),
                "tag": uuid.uuid4().hex,
                "recipient_count": 1,
                "status": e.status.value,
                "attempts": 0,
                "error_code": None if e.status is Status.PENDING else e.status.value.capitalize(),
                "error_message": e.reason,
                "updated_at": now,
            }
            for e in entries
        ]
        statement = self._insert(recipients)
        if hasattr(statement, "on_conflict_do_nothing"):
            statement = statement.on_conflict_do_nothing(index_elements=["campaign_id", "key"])
        valid = [e.recipient for e in entries if e.status is Status.PENDING]
        with self.engine.begin() as conn:
            revived = self._revive(conn, campaign_id, valid, now) if valid else 0
            keys = list({row["key"] for row in rows})
            known = conn.execute(
                select(func.count())
                .select_from(recipients)
                .where(recipients.c.campaign_id == campaign_id, recipients.c.key.in_(keys))
            ).scalar_one()
            conn.execute(statement, rows)
            return revived + len(keys) - known

    @staticmethod
    def _revive(conn: Any, campaign_id: int, valid: Sequence[Recipient], now: float) -> int:
        """Turn rows recorded ``invalid`` by an earlier run (``--skip-invalid``) back to pending when
        the same spreadsheet row now passes, so a fixed row is sent and reported once, not twice."""
        by_row = {r.row: r for r in valid}
        invalid = conn.execute(
            select(recipients.c.id, recipients.c.row).where(
                recipients.c.campaign_id == campaign_id,
                recipients.c.status == Status.INVALID.value,
                recipients.c.row.in_(list(by_row)),
            )
        ).all()
        revived = 0
        for record in invalid:
            fixed = by_row[record.row]
            taken = conn.execute(
                select(recipients.c.id).where(
                    recipients.c.campaign_id == campaign_id, recipients.c.key == fixed.key
                )
            ).first()
            if taken is not None:  # another row already holds the key: this one stays as it was
                continue
            conn.execute(
                update(recipients)
                .where(recipients.c.id == record.id, recipients.c.status == Status.INVALID.value)
                .values(
                    key=fixed.key,
                    email=fixed.email,
                    name=fixed.name,
                    fields=json.dumps(fixed.fields, ensure_ascii=False),
                    status=Status.PENDING.value,
                    error_code=None,
                    error_message=None,
                    updated_at=now,
                )
            )
            conn.execute(
                _INSERT_EVENT,
                {
                    "campaign_id": campaign_id,
                    "recipient_id": record.id,
                    "at": now,
                    "from_status": Status.INVALID.value,
                    "to_status": Status.PENDING.value,
                    "code": "Revived",
                    "detail": "the row passes pre-flight now",
                    "worker": None,
                },
            )
            revived += 1
        return revived

    # -- claiming work ----------------------------------------------------------------------------

    def claim(
        self, campaign_id: int, mailbox: str, limit: int, *, worker: str, lease_seconds: float
    ) -> list[ClaimedRecipient]:
        """Lease up to ``limit`` due pending recipients to ``worker`` for sending from ``mailbox``."""
        return self._lease(
            _CLAIM,
            campaign_id,
            mailbox,
            limit,
            worker=worker,
            lease_seconds=lease_seconds,
            moves=(Status.PENDING, Status.SENDING),
        )

    def claim_unknown(
        self, campaign_id: int, mailbox: str, limit: int, *, worker: str, lease_seconds: float
    ) -> list[ClaimedRecipient]:
        """Lease unknown-outcome recipients of ``mailbox`` whose next check is due, for reconciliation."""
        return self._lease(
            _CLAIM_UNKNOWN,
            campaign_id,
            mailbox,
            limit,
            worker=worker,
            lease_seconds=lease_seconds,
            moves=None,
        )

    def _lease(
        self,
        statement: Any,
        campaign_id: int,
        mailbox: str,
        limit: int,
        *,
        worker: str,
        lease_seconds: float,
        moves: tuple[Status, Status] | None,
    ) -> list[ClaimedRecipient]:
        """Run a lease statement in one transaction, with an event per row when it ``moves`` a status."""
        now = self.clock.time()
        values = {
            "cid": campaign_id,
            "now": now,
            "limit": limit,
            "sender": mailbox,
            "owner": worker,
            "lease_until": now + lease_seconds,
        }
        with self.engine.begin() as conn:
            leased = [ClaimedRecipient.from_row(r, mailbox) for r in conn.execute(statement, values)]
            if leased and moves is not None:
                conn.execute(
                    _INSERT_EVENT,
                    [
                        {
                            "campaign_id": campaign_id,
                            "recipient_id": c.id,
                            "at": now,
                            "from_status": moves[0].value,
                            "to_status": moves[1].value,
                            "code": None,
                            "detail": mailbox,
                            "worker": worker,
                        }
                        for c in leased
                    ],
                )
        leased.sort(key=lambda c: c.id)
        return leased

    def release_stale_leases(self, campaign_id: int) -> int:
        """Turn ``sending`` rows whose worker is gone into ``unknown``: they may have been delivered."""
        now = self.clock.time()
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(recipients.c.id, recipients.c.lease_owner, recipients.c.lease_expires_at).where(
                    recipients.c.campaign_id == campaign_id, recipients.c.status == Status.SENDING.value
                )
            ).all()
            stale = [r.id for r in rows if (r.lease_expires_at or 0) < now or _owner_is_dead(r.lease_owner)]
            if not stale:
                return 0
            conn.execute(
                update(recipients)
                .where(recipients.c.id.in_(stale), recipients.c.status == Status.SENDING.value)
                .values(
                    status=Status.UNKNOWN.value,
                    lease_owner=None,
                    lease_expires_at=None,
                    next_attempt_at=None,
                    error_code="Interrupted",
                    error_message="the run stopped while this message was in flight",
                    updated_at=now,
                )
            )
            conn.execute(
                insert(events),
                [
                    {
                        "campaign_id": campaign_id,
                        "recipient_id": rid,
                        "at": now,
                        "from_status": Status.SENDING.value,
                        "to_status": Status.UNKNOWN.value,
                        "code": "Interrupted",
                        "detail": "lease of a stopped worker",
                        "worker": None,
                    }
                    for rid in stale
                ],
            )
            return len(stale)

    # -- recording outcomes -----------------------------------------------------------------------

    def record(
        self,
        campaign_id: int,
        outcomes: Sequence[Outcome],
        *,
        worker: str,
        from_status: Status = Status.SENDING,
    ) -> int:
        """Apply the outcomes of one batch in one transaction; returns how many rows changed.

        Only rows still leased by ``worker`` in ``from_status`` change, so a worker that lost its lease
        (it was presumed dead) cannot overwrite what another worker recorded since.
        """
        if not outcomes:
            return 0
        for outcome in outcomes:
            if outcome.status not in TRANSITIONS[from_status]:
                raise ValueError(f"transition {from_status} -> {outcome.status} is not allowed")
        now = self.clock.time()
        params = [
            {
                "rid": o.recipient_id,
                "to_status": o.status.value,
                "increment": 1 if (o.attempted and from_status is Status.SENDING) else 0,
                "retry_at": o.retry_at,
                "sent_at_value": (o.sent_at or now) if o.status is Status.SENT else None,
                "code": None if o.status is Status.SENT else o.code,
                "message": None if o.status is Status.SENT else o.message,
                "count": o.recipient_count,
                "from_status": from_status.value,
                "owner": worker,
                "now": now,
            }
            for o in outcomes
        ]
        with self.engine.begin() as conn:
            changed = conn.execute(_RECORD, params).rowcount
            moved = [o for o in outcomes if o.status is not from_status]
            if moved:
                conn.execute(
                    _INSERT_EVENT,
                    [
                        {
                            "campaign_id": campaign_id,
                            "recipient_id": o.recipient_id,
                            "at": now,
                            "from_status": from_status.value,
                            "to_status": o.status.value,
                            "code": o.code,
                            "detail": o.message,
                            "worker": worker,
                        }
                        for o in moved
                    ],
                )
        return changed

    def resolve_unknown(self, campaign_id: int, assume: Status, *, reason: str) -> int:
        """Settle every unknown recipient by the user's explicit choice (sent or pending)."""
        if assume not in (Status.SENT, Status.PENDING):
            raise ValueError("unknown recipients can only be assumed sent or unsent")
        return self._move_all(campaign_id, Status.UNKNOWN, assume, code="UserDecision", detail=reason)

    def retry_failed(self, campaign_id: int, *, code: str | None = None) -> int:
        """Put permanently failed recipients back to pending (optionally only those with ``code``)."""
        return self._move_all(
            campaign_id,
            Status.FAILED,
            Status.PENDING,
            code="RetryFailed",
            detail="put back by retry-failed",
            only_code=code,
            reset_attempts=True,
        )

    def _move_all(
        self,
        campaign_id: int,
        source: Status,
        target: Status,
        *,
        code: str,
        detail: str,
        only_code: str | None = None,
        reset_attempts: bool = False,
    ) -> int:
        now = self.clock.time()
        condition = and_(recipients.c.campaign_id == campaign_id, recipients.c.status == source.value)
        if only_code is not None:
            condition = and_(condition, recipients.c.error_code == only_code)
        values: dict[str, Any] = {
            "status": target.value,
            "updated_at": now,
            "next_attempt_at": None,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if target is Status.SENT:
            values["sent_at"] = now
        if reset_attempts:
            values["attempts"] = 0
        with self.engine.begin() as conn:
            ids = list(conn.execute(select(recipients.c.id).where(condition)).scalars())
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                conn.execute(update(recipients).where(recipients.c.id.in_(part), condition).values(**values))
                conn.execute(
                    insert(events),
                    [
                        {
                            "campaign_id": campaign_id,
                            "recipient_id": rid,
                            "at": now,
                            "from_status": source.value,
                            "to_status": target.value,
                            "code": code,
                            "detail": detail,
                            "worker": None,
                        }
                        for rid in part
                    ],
                )
        return len(ids)

    # -- reading state ------------------------------------------------------------------------

    def counts(self, campaign_id: int) -> dict[Status, int]:
        """How many recipients stand in each status."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(recipients.c.status, func.count())
                .where(recipients.c.campaign_id == campaign_id)
                .group_by(recipients.c.status)
            )
            found = {Status(status): count for status, count in rows}
        return {status: found.get(status, 0) for status in Status}

    def any_in(
        self, campaign_id: int, statuses: Iterable[Status], *, mailboxes: Sequence[str] | None = None
    ) -> bool:
        """Whether any recipient of the campaign stands in one of ``statuses`` (an index probe),
        optionally only among those last attempted from ``mailboxes``."""
        with self.engine.connect() as conn:
            for status in statuses:
                probe = select(recipients.c.id).where(
                    recipients.c.campaign_id == campaign_id, recipients.c.status == status.value
                )
                if mailboxes is not None:
                    probe = probe.where(recipients.c.mailbox.in_(list(mailboxes)))
                if conn.execute(probe.limit(1)).first() is not None:
                    return True
        return False

    def recipients_in_window(self, mailbox: str, since: float) -> int:
        """Recipients addressed from ``mailbox`` since ``since``, across every campaign in this database.

        Messages whose outcome is unknown count too: Exchange may well have counted them.
        """
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.coalesce(func.sum(recipients.c.recipient_count), 0)).where(
                    recipients.c.mailbox == mailbox,
                    recipients.c.status.in_([Status.SENT.value, Status.SENDING.value, Status.UNKNOWN.value]),
                    recipients.c.last_attempt_at >= since,
                )
            ).scalar_one()

    def events_for(self, recipient_id: int) -> list[dict[str, Any]]:
        """The full history of one recipient, oldest first."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(events).where(events.c.recipient_id == recipient_id).order_by(events.c.id)
                )
                .mappings()
                .all()
            )
        return [dict(row) for row in rows]

    def record_bounces(self, campaign_id: int, bounces: Sequence[Bounce]) -> dict[str, int]:
        """Record non-delivery reports in one transaction; returns how many were ``hard``, ``soft``
        or ``unchanged``.

        A hard bounce moves a ``sent`` recipient to ``bounced``. A soft bounce keeps it ``sent`` and
        records the diagnostic, unless an equal or later report is already recorded. Either way an
        event row says so. Running it again with the same reports changes nothing: idempotent.
        """
        now = self.clock.time()
        result = {"hard": 0, "soft": 0, "unchanged": 0}
        with self.engine.begin() as conn:
            for bounce in bounces:
                condition = and_(
                    recipients.c.id == bounce.recipient_id,
                    recipients.c.campaign_id == campaign_id,
                    recipients.c.status == Status.SENT.value,
                )
                values: dict[str, Any] = {
                    "bounce_code": bounce.code,
                    "bounce_diagnostic": bounce.diagnostic,
                    "bounced_at": bounce.at,
                    "updated_at": now,
                }
                if bounce.hard:
                    values["status"] = Status.BOUNCED.value
                else:
                    condition = and_(
                        condition,
                        or_(recipients.c.bounced_at.is_(None), recipients.c.bounced_at < bounce.at),
                    )
                if not conn.execute(update(recipients).where(condition).values(**values)).rowcount:
                    result["unchanged"] += 1
                    continue
                result["hard" if bounce.hard else "soft"] += 1
                conn.execute(
                    insert(events).values(
                        campaign_id=campaign_id,
                        recipient_id=bounce.recipient_id,
                        at=now,
                        from_status=Status.SENT.value,
                        to_status=(Status.BOUNCED if bounce.hard else Status.SENT).value,
                        code="HardBounce" if bounce.hard else "SoftBounce",
                        detail=bounce.diagnostic,
                        worker=None,
                    )
                )
        return result

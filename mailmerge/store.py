"""The state database: the one module that owns SQL.

Every recipient of every campaign is a row whose ``status`` follows a small state machine; every
transition happens inside a transaction together with a row in ``events``, so the database alone
says what happened, whatever happened to the process. Work is claimed through the database with a
lease (owner + expiry), never only in memory, so several workers — on PostgreSQL later — can share a
campaign without sending twice::

    pending ──claim──▶ sending ──202──────────────────▶ sent
       ▲                  │ ──permanent 4xx───────────▶ failed ──retry-failed──▶ pending
       │                  │ ──not executed (429, 424)─▶ pending
       │                  └─ outcome unknown (5xx, timeout, reset, crash) ─▶ unknown
       └──── not in Sent Items after the grace period ◀── unknown ──found in Sent Items──▶ sent

Times are stored as epoch seconds (floats): exact, fast to compare, the same on every database.
"""

from __future__ import annotations

import heapq
import json
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from mailmerge.clock import Clock, SystemClock
from mailmerge.errors import StoreError
from mailmerge.recipients import Recipient


class Status(StrEnum):
    """Where a recipient stands."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    BOUNCED = "bounced"  # sent, then a non-delivery report came back
    INVALID = "invalid"  # the row cannot be sent as it is (recorded with --skip-invalid)
    SUPPRESSED = "suppressed"  # on a suppression list: never sent
    DUPLICATE = "duplicate"  # the same key as an earlier row: the first row wins


#: The transitions the state machine allows; :meth:`Store.record` refuses any other.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.SENDING}),
    Status.SENDING: frozenset({Status.SENT, Status.FAILED, Status.PENDING, Status.UNKNOWN}),
    Status.UNKNOWN: frozenset({Status.SENT, Status.PENDING, Status.UNKNOWN, Status.FAILED}),
    Status.FAILED: frozenset({Status.PENDING}),
    Status.SENT: frozenset({Status.BOUNCED}),
    Status.BOUNCED: frozenset(),
    Status.INVALID: frozenset({Status.PENDING}),
    Status.SUPPRESSED: frozenset(),
    Status.DUPLICATE: frozenset(),
}

#: Statuses in which a recipient still waits to be sent or settled.
OUTSTANDING = frozenset({Status.PENDING, Status.SENDING, Status.UNKNOWN})

metadata = MetaData()

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

recipients = Table(
    "recipients",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id"), nullable=False),
    Column("key", String(1000), nullable=False),
    Column("row", Integer, nullable=False),
    Column("email", String(320), nullable=False),
    Column("name", String(500)),
    Column("fields", Text, nullable=False),
    Column("tag", String(64), nullable=False, unique=True),
    Column("recipient_count", Integer, nullable=False, default=1),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("mailbox", String(320)),
    Column("lease_owner", String(200)),
    Column("lease_expires_at", Float),
    Column("next_attempt_at", Float),
    Column("first_attempt_at", Float),
    Column("last_attempt_at", Float),
    Column("sent_at", Float),
    Column("error_code", String(200)),
    Column("error_message", Text),
    Column("bounce_code", String(32)),
    Column("bounce_diagnostic", Text),
    Column("bounced_at", Float),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("campaign_id", "key", name="uq_recipient_key"),
    Index("ix_recipients_work", "campaign_id", "status", "id"),
    Index("ix_recipients_mailbox_window", "mailbox", "status", "last_attempt_at"),
    # Reports and `status`: per-status and per-mailbox counts, retries due later and sends over time
    # are all index-only scans of this one index, even on a campaign of a million recipients.
    Index("ix_recipients_overview", "campaign_id", "status", "mailbox", "sent_at", "next_attempt_at"),
)

#: Only bounced rows have a bounce code: a partial index finds the soft bounces among a million sent.
ix_recipients_bounce = Index(
    "ix_recipients_bounce",
    recipients.c.campaign_id,
    recipients.c.bounce_code,
    sqlite_where=recipients.c.bounce_code.is_not(None),
    postgresql_where=recipients.c.bounce_code.is_not(None),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("campaign_id", Integer, ForeignKey("campaigns.id"), nullable=False),
    Column("recipient_id", Integer, ForeignKey("recipients.id"), nullable=False),
    Column("at", Float, nullable=False),
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    Column("code", String(200)),
    Column("detail", Text),
    Column("worker", String(200)),
    Index("ix_events_recipient", "recipient_id", "id"),
)


def _claim_statement() -> Any:
    """Lease the next due pending rows of a campaign (``FOR UPDATE SKIP LOCKED`` where supported)."""
    due = (
        select(recipients.c.id)
        .where(
            recipients.c.campaign_id == bindparam("cid"),
            recipients.c.status == Status.PENDING.value,
            or_(recipients.c.next_attempt_at.is_(None), recipients.c.next_attempt_at <= bindparam("now")),
        )
        .order_by(recipients.c.id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
    )
    return (
        update(recipients)
        .where(recipients.c.id.in_(due.scalar_subquery()), recipients.c.status == Status.PENDING.value)
        .values(
            status=Status.SENDING.value,
            mailbox=bindparam("mailbox"),
            lease_owner=bindparam("owner"),
            lease_expires_at=bindparam("lease_until"),
            last_attempt_at=bindparam("now"),
            first_attempt_at=func.coalesce(recipients.c.first_attempt_at, bindparam("now")),
            updated_at=bindparam("now"),
        )
        .returning(
            recipients.c.id,
            recipients.c.row,
            recipients.c.key,
            recipients.c.email,
            recipients.c.name,
            recipients.c.fields,
            recipients.c.tag,
            recipients.c.attempts,
        )
    )


#: Built once: the statements of the sending hot path (a claim and a record per batch).
_CLAIM = _claim_statement()
_RECORD = (
    update(recipients)
    .where(
        recipients.c.id == bindparam("rid"),
        recipients.c.status == bindparam("from_status"),
        recipients.c.lease_owner == bindparam("owner"),
    )
    .values(
        status=bindparam("to_status"),
        attempts=recipients.c.attempts + bindparam("increment"),
        next_attempt_at=bindparam("retry_at"),
        sent_at=func.coalesce(bindparam("sent_at_value"), recipients.c.sent_at),
        error_code=bindparam("code"),
        error_message=bindparam("message"),
        recipient_count=func.coalesce(bindparam("count"), recipients.c.recipient_count),
        lease_owner=None,
        lease_expires_at=None,
        updated_at=bindparam("now"),
    )
)
_INSERT_EVENT = insert(events)


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


class Store:
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
                f"cannot open the state database: {exc.__class__.__name__}", context=_safe_url(url)
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
        with self.engine.begin() as conn:
            before = self._count(conn, campaign_id)
            conn.execute(statement, rows)
            return self._count(conn, campaign_id) - before

    @staticmethod
    def _count(conn: Any, campaign_id: int) -> int:
        return conn.execute(
            select(func.count()).select_from(recipients).where(recipients.c.campaign_id == campaign_id)
        ).scalar_one()

    # -- claiming work ----------------------------------------------------------------------------

    def claim(
        self, campaign_id: int, mailbox: str, limit: int, *, worker: str, lease_seconds: float
    ) -> list[ClaimedRecipient]:
        """Lease up to ``limit`` due pending recipients to ``worker`` for sending from ``mailbox``."""
        now = self.clock.time()
        values = {
            "cid": campaign_id,
            "now": now,
            "limit": limit,
            "mailbox": mailbox,
            "owner": worker,
            "lease_until": now + lease_seconds,
        }
        with self.engine.begin() as conn:
            claimed = [
                ClaimedRecipient(
                    id=r.id,
                    row=r.row,
                    key=r.key,
                    email=r.email,
                    name=r.name,
                    fields=json.loads(r.fields),
                    tag=r.tag,
                    attempts=r.attempts,
                    mailbox=mailbox,
                )
                for r in conn.execute(_CLAIM, values)
            ]
            if claimed:
                conn.execute(
                    _INSERT_EVENT,
                    [
                        {
                            "campaign_id": campaign_id,
                            "recipient_id": c.id,
                            "at": now,
                            "from_status": Status.PENDING.value,
                            "to_status": Status.SENDING.value,
                            "code": None,
                            "detail": mailbox,
                            "worker": worker,
                        }
                        for c in claimed
                    ],
                )
        claimed.sort(key=lambda c: c.id)
        return claimed

    def claim_unknown(
        self, campaign_id: int, mailbox: str, limit: int, *, worker: str, lease_seconds: float
    ) -> list[ClaimedRecipient]:
        """Lease unknown-outcome recipients of ``mailbox`` whose next check is due, for reconciliation."""
        now = self.clock.time()
        candidates = (
            select(recipients.c.id)
            .where(
                recipients.c.campaign_id == campaign_id,
                recipients.c.status == Status.UNKNOWN.value,
                recipients.c.mailbox == mailbox,
                or_(recipients.c.next_attempt_at.is_(None), recipients.c.next_attempt_at <= now),
                or_(recipients.c.lease_expires_at.is_(None), recipients.c.lease_expires_at < now),
            )
            .order_by(recipients.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(recipients)
            .where(
                recipients.c.id.in_(candidates.scalar_subquery()), recipients.c.status == Status.UNKNOWN.value
            )
            .values(lease_owner=worker, lease_expires_at=now + lease_seconds, updated_at=now)
            .returning(
                recipients.c.id,
                recipients.c.row,
                recipients.c.key,
                recipients.c.email,
                recipients.c.name,
                recipients.c.fields,
                recipients.c.tag,
                recipients.c.attempts,
                recipients.c.last_attempt_at,
            )
        )
        with self.engine.begin() as conn:
            rows = list(conn.execute(statement))
        return [
            ClaimedRecipient(
                id=r.id,
                row=r.row,
                key=r.key,
                email=r.email,
                name=r.name,
                fields=json.loads(r.fields),
                tag=r.tag,
                attempts=r.attempts,
                mailbox=mailbox,
            )
            for r in sorted(rows, key=lambda r: r.id)
        ]

    def last_attempt_times(self, ids: Iterable[int]) -> dict[int, float]:
        """When each recipient's latest attempt started (for the reconciliation grace period)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(recipients.c.id, recipients.c.last_attempt_at).where(recipients.c.id.in_(list(ids)))
            )
            return {r.id: r.last_attempt_at or 0.0 for r in rows}

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

    def any_in(self, campaign_id: int, statuses: Iterable[Status]) -> bool:
        """Whether any recipient of the campaign stands in one of ``statuses`` (an index probe)."""
        with self.engine.connect() as conn:
            for status in statuses:
                probe = (
                    select(recipients.c.id)
                    .where(recipients.c.campaign_id == campaign_id, recipients.c.status == status.value)
                    .limit(1)
                )
                if conn.execute(probe).first() is not None:
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

    def next_due(self, campaign_id: int) -> float | None:
        """The earliest time a pending or unknown recipient becomes workable, or None if none wait."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.min(func.coalesce(recipients.c.next_attempt_at, 0.0))).where(
                    recipients.c.campaign_id == campaign_id,
                    recipients.c.status.in_([Status.PENDING.value, Status.UNKNOWN.value]),
                )
            ).scalar()

    def iter_recipients(self, campaign_id: int, *, chunk: int = 2_000) -> Iterator[dict[str, Any]]:
        """Every recipient of a campaign in row order, streamed in chunks (for reports)."""
        last_id = 0
        columns = [
            recipients.c[name]
            for name in (
                "id",
                "row",
                "key",
                "email",
                "name",
                "status",
                "attempts",
                "mailbox",
                "tag",
                "first_attempt_at",
                "last_attempt_at",
                "sent_at",
                "error_code",
                "error_message",
            )
        ]
        while True:
            with self.engine.connect() as conn:
                rows = (
                    conn.execute(
                        select(*columns)
                        .where(recipients.c.campaign_id == campaign_id, recipients.c.id > last_id)
                        .order_by(recipients.c.id)
                        .limit(chunk)
                    )
                    .mappings()
                    .all()
                )
            if not rows:
                return
            last_id = rows[-1]["id"]
            yield from (dict(row) for row in rows)

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

    # -- reports, status and bounces --------------------------------------------------------------
    # Read-only aggregates and streams for `report`, `status` and `list`, and the one write that
    # `bounces` needs. Every query here is an index probe or an index-only scan (see
    # ix_recipients_work, ix_recipients_overview and ix_recipients_bounce), never one scan per status.

    def _ensure_overview_indexes(self) -> None:
        """Add the indexes these queries rely on to a database created before they existed."""
        if getattr(self, "_overview_ready", False):
            return
        table_indexes = {index.name: index for index in recipients.indexes}
        with self.engine.begin() as conn:
            for name in ("ix_recipients_overview", "ix_recipients_bounce"):
                table_indexes[name].create(conn, checkfirst=True)
        self._overview_ready = True

    @staticmethod
    def holds_state(url: str) -> bool:
        """Whether the database at ``url`` holds mailmerge's tables, checked without creating them."""
        try:
            engine = create_engine(url)
            try:
                inspector = inspect(engine)
                return inspector.has_table("campaigns") and inspector.has_table("recipients")
            finally:
                engine.dispose()
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot open the database: {exc.__class__.__name__}", context=_safe_url(url)
            ) from exc

    def campaign_list(self) -> list[dict[str, Any]]:
        """Every campaign in this database, oldest first, with its recipients counted per status."""
        self._ensure_overview_indexes()
        with self.engine.connect() as conn:
            found = conn.execute(
                select(campaigns.c.id, campaigns.c.name, campaigns.c.created_at).order_by(campaigns.c.id)
            ).all()
            tallies = conn.execute(
                select(recipients.c.campaign_id, recipients.c.status, func.count()).group_by(
                    recipients.c.campaign_id, recipients.c.status
                )
            ).all()
        counts: dict[int, dict[Status, int]] = {row.id: dict.fromkeys(Status, 0) for row in found}
        for campaign_id, status, count in tallies:
            if campaign_id in counts:
                counts[campaign_id][Status(status)] = count
        return [
            {"id": row.id, "name": row.name, "created_at": row.created_at, "counts": counts[row.id]}
            for row in found
        ]

    def campaign_created_at(self, campaign_id: int) -> float | None:
        """When the campaign was first recorded (its first run), in epoch seconds."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(campaigns.c.created_at).where(campaigns.c.id == campaign_id)
            ).scalar_one_or_none()

    def counts_by_mailbox(self, campaign_id: int) -> dict[str, dict[Status, int]]:
        """Recipients per sending mailbox and status (recipients never attempted have no mailbox)."""
        self._ensure_overview_indexes()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(recipients.c.status, recipients.c.mailbox, func.count())
                .where(recipients.c.campaign_id == campaign_id, recipients.c.mailbox.is_not(None))
                .group_by(recipients.c.status, recipients.c.mailbox)
            ).all()
        result: dict[str, dict[Status, int]] = {}
        for status, mailbox, count in rows:
            result.setdefault(mailbox, dict.fromkeys(Status, 0))[Status(status)] = count
        return dict(sorted(result.items()))

    def waiting(self, campaign_id: int, status: Status, now: float) -> tuple[int, float | None]:
        """How many recipients in ``status`` wait for a time after ``now``, and the earliest such time."""
        self._ensure_overview_indexes()
        with self.engine.connect() as conn:
            count, earliest = conn.execute(
                select(func.count(), func.min(recipients.c.next_attempt_at)).where(
                    recipients.c.campaign_id == campaign_id,
                    recipients.c.status == status.value,
                    recipients.c.next_attempt_at > now,
                )
            ).one()
        return count, earliest

    def window_started_at(self, mailbox: str, since: float) -> float | None:
        """The oldest attempt from ``mailbox`` still inside the window that began at ``since``."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(func.min(recipients.c.last_attempt_at)).where(
                    recipients.c.mailbox == mailbox,
                    recipients.c.status.in_([Status.SENT.value, Status.SENDING.value, Status.UNKNOWN.value]),
                    recipients.c.last_attempt_at >= since,
                )
            ).scalar()

    def sent_span(self, campaign_id: int) -> tuple[float | None, float | None]:
        """The first and last time a message of the campaign was accepted (sent or later bounced)."""
        self._ensure_overview_indexes()
        with self.engine.connect() as conn:
            first, last = conn.execute(
                select(func.min(recipients.c.sent_at), func.max(recipients.c.sent_at)).where(
                    recipients.c.campaign_id == campaign_id,
                    recipients.c.status.in_([Status.SENT.value, Status.BOUNCED.value]),
                )
            ).one()
        return first, last

    def sends_over_time(self, campaign_id: int, bucket_seconds: int) -> list[tuple[str, int, int]]:
        """``(mailbox, bucket, messages)`` for messages accepted, bucket = sent_at // bucket_seconds."""
        self._ensure_overview_indexes()
        ratio = recipients.c.sent_at / bucket_seconds
        bucket = (
            func.cast(ratio, Integer) if self.engine.dialect.name == "sqlite" else func.floor(ratio)
        ).label("bucket")
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(recipients.c.mailbox, bucket, func.count())
                .where(
                    recipients.c.campaign_id == campaign_id,
                    recipients.c.status.in_([Status.SENT.value, Status.BOUNCED.value]),
                    recipients.c.sent_at.is_not(None),
                )
                .group_by(recipients.c.mailbox, bucket)
            ).all()
        return [(mailbox or "", int(b), count) for mailbox, b, count in rows]

    def problem_groups(self, campaign_id: int) -> list[dict[str, Any]]:
        """Recipients not (or not cleanly) delivered, grouped by status and cause, largest group first.

        Each group: ``status``, ``code`` (the Graph error code, or the bounce status code), ``count``,
        one example ``message`` and the spreadsheet ``rows`` of its first few recipients. Soft bounces
        (still ``sent``) form groups of their own with ``soft_bounce`` set.
        """
        self._ensure_overview_indexes()
        error_statuses = [Status.FAILED, Status.UNKNOWN, Status.INVALID, Status.SUPPRESSED, Status.DUPLICATE]
        groups: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            for status, code_column, message_column, extra in (
                (error_statuses, recipients.c.error_code, recipients.c.error_message, None),
                ([Status.PENDING], recipients.c.error_code, recipients.c.error_message, "retry"),
                ([Status.BOUNCED], recipients.c.bounce_code, recipients.c.bounce_diagnostic, None),
                ([Status.SENT], recipients.c.bounce_code, recipients.c.bounce_diagnostic, "soft"),
            ):
                condition = and_(
                    recipients.c.campaign_id == campaign_id,
                    recipients.c.status.in_([s.value for s in status]),
                )
                if extra == "retry":
                    condition = and_(condition, recipients.c.error_code.is_not(None))
                if extra == "soft":
                    condition = and_(condition, recipients.c.bounce_code.is_not(None))
                rows = conn.execute(
                    select(
                        recipients.c.status,
                        code_column,
                        func.count(),
                        func.min(message_column),
                        func.min(recipients.c.id),
                    )
                    .where(condition)
                    .group_by(recipients.c.status, code_column)
                ).all()
                for row_status, code, count, message, first_id in rows:
                    examples = conn.execute(
                        select(recipients.c.row)
                        .where(
                            condition,
                            recipients.c.status == row_status,
                            code_column.is_(None) if code is None else code_column == code,
                            recipients.c.id >= first_id,
                        )
                        .order_by(recipients.c.id)
                        .limit(5)
                    ).scalars()
                    groups.append(
                        {
                            "status": Status(row_status),
                            "code": code,
                            "count": count,
                            "message": message,
                            "rows": list(examples),
                            "soft_bounce": extra == "soft",
                        }
                    )
        groups.sort(key=lambda g: (-g["count"], g["status"].value, g["code"] or ""))
        return groups

    def field_names(self, campaign_id: int) -> list[str]:
        """The spreadsheet's column names, as stored with the campaign's first recipient."""
        with self.engine.connect() as conn:
            first = conn.execute(
                select(recipients.c.fields)
                .where(recipients.c.campaign_id == campaign_id)
                .order_by(recipients.c.id)
                .limit(1)
            ).scalar()
        return list(json.loads(first)) if first else []

    def iter_report(
        self,
        campaign_id: int,
        *,
        statuses: Iterable[Status] | None = None,
        with_fields: bool = False,
        chunk: int = 1_000,
    ) -> Iterator[dict[str, Any]]:
        """Recipients of the campaign in row order with every column a report shows, streamed.

        One stream per status, each paged along ``ix_recipients_work`` (campaign, status, id) and merged
        by id: every page is an index range, so memory and time per page stay flat at any size. A
        report read while a run goes on sees each page as it was when read.
        """
        self._ensure_overview_indexes()
        wanted = sorted(set(statuses) if statuses is not None else set(Status), key=lambda s: s.value)
        streams = [self._report_pages(campaign_id, status, with_fields, chunk) for status in wanted]
        yield from heapq.merge(*streams, key=lambda record: record["id"])

    def _report_pages(
        self, campaign_id: int, status: Status, with_fields: bool, chunk: int
    ) -> Iterator[dict[str, Any]]:
        names = [
            "id",
            "row",
            "key",
            "email",
            "name",
            "status",
            "attempts",
            "mailbox",
            "first_attempt_at",
            "last_attempt_at",
            "sent_at",
            "error_code",
            "error_message",
            "bounce_code",
            "bounce_diagnostic",
            "bounced_at",
            "tag",
        ]
        if with_fields:
            names.append("fields")
        columns = [recipients.c[name] for name in names]
        last_id = 0
        while True:
            with self.engine.connect() as conn:
                rows = (
                    conn.execute(
                        select(*columns)
                        .where(
                            recipients.c.campaign_id == campaign_id,
                            recipients.c.status == status.value,
                            recipients.c.id > last_id,
                        )
                        .order_by(recipients.c.id)
                        .limit(chunk)
                    )
                    .mappings()
                    .all()
                )
            for row in rows:
                record = dict(row)
                if with_fields:
                    record["fields"] = json.loads(record["fields"])
                yield record
            if len(rows) < chunk:
                return
            last_id = rows[-1]["id"]

    def recipient_by_tag(self, campaign_id: int, tag: str) -> dict[str, Any] | None:
        """The campaign's recipient whose messages carry ``tag`` (a unique-index probe)."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(
                        recipients.c.id, recipients.c.email, recipients.c.status, recipients.c.mailbox
                    ).where(recipients.c.campaign_id == campaign_id, recipients.c.tag == tag)
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def delivered_by_address(
        self, campaign_id: int, addresses: Iterable[str], *, chunk: int = 5_000
    ) -> dict[str, list[dict[str, Any]]]:
        """Sent or bounced recipients whose address (case-insensitively) is one of ``addresses``.

        Addresses are not indexed, so this is one streamed pass over the sent recipients, made once for
        all the reports that carried no tag or message id rather than once per report.
        """
        wanted = {address.lower() for address in addresses}
        found: dict[str, list[dict[str, Any]]] = {}
        if not wanted:
            return found
        for status in (Status.SENT, Status.BOUNCED):
            last_id = 0
            while True:
                with self.engine.connect() as conn:
                    rows = (
                        conn.execute(
                            select(
                                recipients.c.id,
                                recipients.c.email,
                                recipients.c.status,
                                recipients.c.mailbox,
                                recipients.c.sent_at,
                            )
                            .where(
                                recipients.c.campaign_id == campaign_id,
                                recipients.c.status == status.value,
                                recipients.c.id > last_id,
                            )
                            .order_by(recipients.c.id)
                            .limit(chunk)
                        )
                        .mappings()
                        .all()
                    )
                for row in rows:
                    if row["email"].lower() in wanted:
                        found.setdefault(row["email"].lower(), []).append(dict(row))
                if len(rows) < chunk:
                    break
                last_id = rows[-1]["id"]
        return found

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

    def iter_bounced(self, campaign_id: int, *, chunk: int = 2_000) -> Iterator[dict[str, Any]]:
        """Hard-bounced recipients in row order: address, name, bounce code, diagnostic and time."""
        for record in self._report_pages(campaign_id, Status.BOUNCED, False, chunk):
            yield {
                name: record[name]
                for name in ("row", "email", "name", "bounce_code", "bounce_diagnostic", "bounced_at")
            }


def _safe_url(url: str) -> str:
    """A database URL with any password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return "the database URL"

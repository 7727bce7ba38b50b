"""The state database's schema: the recipient state machine, the tables and the hot-path statements.

Times are stored as epoch seconds (floats): exact, fast to compare, the same on every database.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError


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


#: What a claim returns of each row: what the engine needs to build and track the message.
CLAIMED_COLUMNS = tuple(
    recipients.c[name]
    for name in ("id", "row", "key", "email", "name", "fields", "tag", "attempts", "last_attempt_at")
)


def _lease(current: Status, *conditions: Any, **values: Any) -> Any:
    """Lease the first ``limit`` rows of a campaign in ``current`` status matching ``conditions``.

    The rows are picked in a CTE with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite's single writer
    needs none) and updated through ``UPDATE ... FROM``: with ``WHERE id IN (subquery)`` PostgreSQL may
    run the subquery once per row and lease more than ``limit``.
    """
    due = (
        select(recipients.c.id)
        .where(
            recipients.c.campaign_id == bindparam("cid"), recipients.c.status == current.value, *conditions
        )
        .order_by(recipients.c.id)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    return (
        update(recipients)
        .where(recipients.c.id == due.c.id, recipients.c.status == current.value)
        .values(lease_owner=bindparam("owner"), lease_expires_at=bindparam("lease_until"), **values)
        .returning(*CLAIMED_COLUMNS)
    )


#: Built once: the statements of the sending hot path (a claim and a record per batch).
#: pending → sending, for the engine to send.
_CLAIM = _lease(
    Status.PENDING,
    or_(recipients.c.next_attempt_at.is_(None), recipients.c.next_attempt_at <= bindparam("now")),
    status=Status.SENDING.value,
    mailbox=bindparam("sender"),
    last_attempt_at=bindparam("now"),
    first_attempt_at=func.coalesce(recipients.c.first_attempt_at, bindparam("now")),
    updated_at=bindparam("now"),
)
#: unknown rows of one mailbox whose check is due, leased (still unknown) for reconciliation.
_CLAIM_UNKNOWN = _lease(
    Status.UNKNOWN,
    recipients.c.mailbox == bindparam("sender"),
    or_(recipients.c.next_attempt_at.is_(None), recipients.c.next_attempt_at <= bindparam("now")),
    or_(recipients.c.lease_expires_at.is_(None), recipients.c.lease_expires_at < bindparam("now")),
    updated_at=bindparam("now"),
)
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


def safe_url(url: str) -> str:
    """A database URL with any password masked, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return "the database URL"

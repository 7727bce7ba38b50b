"""The read side of the store for ``report``, ``status``, ``list`` and ``bounces``.

Aggregates and streams only: every query is an index probe or an index-only scan (see
ix_recipients_work, ix_recipients_overview and ix_recipients_bounce), never one scan per status.
Mixed into :class:`mailmerge.store.Store`, which stays the one owner of SQL.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import (
    Engine,
    Integer,
    and_,
    create_engine,
    func,
    inspect,
    select,
)
from sqlalchemy.exc import SQLAlchemyError

from mailmerge.clock import Clock
from mailmerge.errors import StoreError
from mailmerge.store.schema import Status, campaigns, recipients, safe_url

#: The columns of a report row, in the order reports show them.
REPORT_FIELDS = (
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
)


class Reporting:
    """Read-only queries over campaign state (a mixin of :class:`Store`)."""

    engine: Engine
    clock: Clock

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
                f"cannot open the database: {exc.__class__.__name__}", context=safe_url(url)
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
        names = [*REPORT_FIELDS, "fields"] if with_fields else list(REPORT_FIELDS)
        for row in self._status_pages(campaign_id, status, names, chunk):
            if with_fields:
                row["fields"] = json.loads(row["fields"])
            yield row

    def _status_pages(
        self, campaign_id: int, status: Status, names: list[str], chunk: int
    ) -> Iterator[dict[str, Any]]:
        """Rows of one status in id order, a page at a time (keyset paging on ix_recipients_work)."""
        columns = [recipients.c.id, *(recipients.c[name] for name in names if name != "id")]
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
            yield from (dict(row) for row in rows)
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
            for row in self._status_pages(
                campaign_id, status, ["email", "status", "mailbox", "sent_at"], chunk
            ):
                if row["email"].lower() in wanted:
                    found.setdefault(row["email"].lower(), []).append(row)
        return found

    def iter_bounced(self, campaign_id: int, *, chunk: int = 2_000) -> Iterator[dict[str, Any]]:
        """Hard-bounced recipients in row order: address, name, bounce code, diagnostic and time."""
        for record in self._report_pages(campaign_id, Status.BOUNCED, False, chunk):
            yield {
                name: record[name]
                for name in ("row", "email", "name", "bounce_code", "bounce_diagnostic", "bounced_at")
            }

"""Per-recipient delivery reports, streamed from the store so a million rows need no more memory than ten.

CSV cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or
carriage return) are neutralised with a leading apostrophe: a recipient's name must never become
code on the machine of whoever opens the report.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from mailmerge.store import Status, Store

COLUMNS = (
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
    "tag",
)
TIME_COLUMNS = frozenset({"first_attempt_at", "last_attempt_at", "sent_at"})
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMATS = ("csv", "json")


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds")


def report_rows(store: Store, campaign_id: int) -> Iterator[dict[str, Any]]:
    """Report rows in spreadsheet order, with times as ISO 8601 UTC."""
    for record in store.iter_recipients(campaign_id):
        row = {column: record[column] for column in COLUMNS}
        row["key"] = " | ".join(str(record["key"]).split("\x1f"))
        for column in TIME_COLUMNS:
            row[column] = _iso(record[column])
        yield row


def neutralise(value: object) -> object:
    """A cell value that a spreadsheet will show as text, never evaluate."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow({k: neutralise(v) for k, v in row.items()})
        count += 1
    return count


def write_json(
    rows: Iterator[dict[str, Any]], out: IO[str], *, campaign: str, counts: dict[Status, int]
) -> int:
    """Write ``{"campaign", "generated_at", "summary", "recipients": [...]}`` as it streams."""
    head = {
        "campaign": campaign,
        "generated_at": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "summary": {status.value: n for status, n in counts.items()},
    }
    out.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "recipients": [')
    count = 0
    for row in rows:
        out.write(("\n  " if count == 0 else ",\n  ") + json.dumps(row, ensure_ascii=False))
        count += 1
    out.write("\n]}\n")
    return count


def write_report(store: Store, campaign_id: int, campaign: str, fmt: str, out: IO[str]) -> int:
    """Write the campaign's report in ``fmt`` to ``out``; returns the number of recipients."""
    rows = report_rows(store, campaign_id)
    if fmt == "csv":
        return write_csv(rows, out)
    if fmt == "json":
        return write_json(rows, out, campaign=campaign, counts=store.counts(campaign_id))
    raise ValueError(f"unknown report format {fmt!r}")

"""Per-recipient delivery reports (CSV, Excel, JSON, HTML), streamed from the store so a million rows
need no more memory than ten.

Every format has one row per recipient with the same columns (:data:`COLUMNS`), optionally followed by
the recipient's original spreadsheet columns so the report can be merged back. Summaries come from
aggregate queries, never from the rows, so nothing is held in memory while rows stream out.

Recipient data is untrusted. CSV cells that a spreadsheet would run as a formula (starting with ``=``,
``+``, ``-``, ``@``, tab or carriage return) are neutralised with a leading apostrophe; Excel cells
are written as typed text with Excel's own quote prefix, never as formulas; HTML is autoescaped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from mailmerge.advice import advice_for
from mailmerge.store import Status, Store
from mailmerge.store.reporting import REPORT_FIELDS

#: A report's columns: the store's report fields without its internal row id.
COLUMNS = tuple(name for name in REPORT_FIELDS if name != "id")
TIME_COLUMNS = frozenset({"first_attempt_at", "last_attempt_at", "sent_at", "bounced_at"})
NUMBER_COLUMNS = frozenset({"row", "attempts"})
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMATS = ("csv", "xlsx", "json", "html")
SCHEMA_VERSION = 1
#: Problems are listed by what most needs a person's attention, then by size.
PROBLEM_ORDER = ("failed", "bounced", "unknown", "invalid", "pending", "soft", "suppressed", "duplicate")
#: The HTML table stops after this many rows (the summary always covers every recipient).
HTML_ROW_LIMIT = 5_000


@dataclass(frozen=True)
class ReportOptions:
    """What a report includes.

    ``statuses`` filters the recipient rows (the summary always covers the whole campaign);
    ``with_columns`` appends the original spreadsheet columns; ``campaign_file`` is named in the
    commands the HTML report suggests.
    """

    statuses: frozenset[Status] | None = None
    with_columns: bool = False
    html_row_limit: int = HTML_ROW_LIMIT
    campaign_file: str = "CAMPAIGN"


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``2024-05-01T12:00:00+00:00``)."""
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds")


_iso = iso  # the name earlier versions exported


def display_key(key: str) -> str:
    """A recipient key as a person reads it: the parts of a composite key joined by `` | ``."""
    return " | ".join(str(key).split("\x1f"))


def neutralise(value: object) -> object:
    """A cell value that a spreadsheet will show as text, never evaluate."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def source_columns(field_names: Iterable[str]) -> list[tuple[str, str]]:
    """``(report column, spreadsheet column)`` for each original column.

    Original columns keep their names, except one that a report column already uses (``email``,
    ``name``, ``status`` ...), which becomes ``source:<name>``.
    """
    return [(f"source:{name}" if name in COLUMNS else name, name) for name in field_names]


def report_records(
    store: Store, campaign_id: int, options: ReportOptions | None = None
) -> Iterator[dict[str, Any]]:
    """Report rows in spreadsheet order, typed: times as epoch seconds, ``fields`` when asked for."""
    options = options or ReportOptions()
    for record in store.iter_report(campaign_id, statuses=options.statuses, with_fields=options.with_columns):
        row = {column: record[column] for column in COLUMNS}
        row["key"] = display_key(record["key"])
        if options.with_columns:
            row["fields"] = record["fields"]
        yield row


def flat_row(record: dict[str, Any], sources: list[tuple[str, str]]) -> dict[str, Any]:
    """A report record as one flat row of cells: times in ISO 8601, original columns appended."""
    row = {column: iso(record[column]) if column in TIME_COLUMNS else record[column] for column in COLUMNS}
    fields = record.get("fields") or {}
    for column, name in sources:
        row[column] = fields.get(name, "")
    return row


def _problem_rank(problem: dict[str, Any]) -> tuple[int, int]:
    kind = "soft" if problem["soft_bounce"] else problem["status"]
    return PROBLEM_ORDER.index(kind), -problem["count"]


def report_head(
    store: Store, campaign_id: int, campaign: str, options: ReportOptions | None = None
) -> dict[str, Any]:
    """Everything a report says before its rows: which campaign, when, which filter, and the summary.

    The summary (counts by status and mailbox, the send period, the problems found and their fixes)
    comes from aggregate queries, so its cost does not depend on how many rows follow.
    """
    options = options or ReportOptions()
    counts = store.counts(campaign_id)
    first_sent, last_sent = store.sent_span(campaign_id)
    statuses = options.statuses
    problems = []
    for group in store.problem_groups(campaign_id):
        advice = advice_for(
            group["status"], group["code"], soft_bounce=group["soft_bounce"], campaign=options.campaign_file
        )
        problems.append(
            {
                "status": group["status"].value,
                "soft_bounce": group["soft_bounce"],
                "code": group["code"],
                "count": group["count"],
                "example_message": group["message"],
                "example_rows": group["rows"],
                "what": advice.what,
                "fix": advice.fix,
            }
        )
    problems.sort(key=_problem_rank)
    return {
        "schema_version": SCHEMA_VERSION,
        "campaign": campaign,
        "generated_at": iso(store.clock.time()),
        "filter": {"status": sorted(s.value for s in statuses)} if statuses else None,
        "summary": {
            "total": sum(counts.values()),
            "included": sum(counts.values()) if statuses is None else sum(counts[s] for s in statuses),
            "by_status": {status.value: n for status, n in counts.items()},
            "by_mailbox": {
                mailbox: {status.value: n for status, n in per.items() if n}
                for mailbox, per in store.counts_by_mailbox(campaign_id).items()
            },
            "first_sent_at": iso(first_sent),
            "last_sent_at": iso(last_sent),
            "problems": problems,
        },
    }


# -- writers -------------------------------------------------------------------------------------


def write_csv(
    rows: Iterable[dict[str, Any]], out: IO[str], *, sources: list[tuple[str, str]] | None = None
) -> int:
    """CSV of flat rows (see :func:`flat_row`) under a header; every cell, header included,
    neutralised against formula injection."""
    header = [*COLUMNS, *(column for column, _ in sources or [])]
    writer = csv.writer(out, lineterminator="\r\n")  # CRLF (RFC 4180): a lone CR in a cell is then quoted
    writer.writerow([neutralise(name) for name in header])
    count = 0
    for row in rows:
        writer.writerow([neutralise(row.get(name)) for name in header])
        count += 1
    return count


def write_json(
    rows: Iterable[dict[str, Any]],
    out: IO[str],
    *,
    campaign: str,
    counts: dict[Status, int] | None = None,
    head: dict[str, Any] | None = None,
) -> int:
    """Write ``head`` (see :func:`report_head`), then ``"recipients": [...]``, one object per line, as
    the rows stream. Without ``head``, a minimal one is made from ``campaign`` and ``counts``."""
    if head is None:
        head = {
            "schema_version": SCHEMA_VERSION,
            "campaign": campaign,
            "generated_at": iso(datetime.now(tz=UTC).timestamp()),
            "summary": {"by_status": {status.value: n for status, n in (counts or {}).items()}},
        }
    text = json.dumps(head, ensure_ascii=False, indent=1)
    out.write(text[: text.rindex("}")].rstrip() + ',\n "recipients": [')
    count = 0
    for row in rows:
        item = {
            column: iso(value) if column in TIME_COLUMNS and isinstance(value, float) else value
            for column, value in row.items()
        }
        out.write(("\n  " if count == 0 else ",\n  ") + json.dumps(item, ensure_ascii=False))
        count += 1
    out.write("\n ]\n}\n")
    return count


def write_report(
    store: Store,
    campaign_id: int,
    campaign: str,
    fmt: str,
    out: IO[Any],
    options: ReportOptions | None = None,
) -> int:
    """Write the campaign's report in ``fmt`` to ``out``; returns the number of recipient rows.

    ``out`` is a text stream, except for ``xlsx``, which needs a binary stream or a path.
    """
    options = options or ReportOptions()
    sources = source_columns(store.field_names(campaign_id)) if options.with_columns else []
    if fmt == "csv":
        records = report_records(store, campaign_id, options)
        return write_csv((flat_row(r, sources) for r in records), out, sources=sources)
    if fmt == "json":
        head = report_head(store, campaign_id, campaign, options)
        return write_json(report_records(store, campaign_id, options), out, campaign=campaign, head=head)
    if fmt == "xlsx":
        from mailmerge.report_xlsx import write_xlsx

        head = report_head(store, campaign_id, campaign, options)
        return write_xlsx(report_records(store, campaign_id, options), out, sources=sources, head=head)
    if fmt == "html":
        from mailmerge.report_html import write_html

        return write_html(store, campaign_id, campaign, out, options)
    raise ValueError(f"unknown report format {fmt!r}")


def open_output(path: Path, fmt: str) -> IO[Any]:
    """The file a report of ``fmt`` is written to: binary for Excel, UTF-8 text otherwise."""
    if fmt == "xlsx":
        return path.open("wb")
    return path.open("w", encoding="utf-8", newline="")

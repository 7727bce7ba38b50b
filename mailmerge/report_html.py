"""The HTML report: one self-contained page a person can read and hand on.

Summary figures, the status breakdown, a chart of sends over time per mailbox, problems grouped by
cause with the fix to make, and the recipient table. Rendered with Jinja2 from a template shipped in
the package (``mailmerge/templates/report.html.j2``) with autoescaping on: recipient data is untrusted
and only ever reaches the page escaped. No scripts, fonts or images are loaded from anywhere.

It streams like the other formats: the figures and the chart come from aggregate queries, the table
from the row stream, and Jinja2's ``generate`` writes the page as the rows arrive. The table stops at
``ReportOptions.html_row_limit`` rows (a browser cannot show a million anyway) and says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from itertools import islice
from typing import IO, Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from mailmerge.report import (
    ReportOptions,
    display_key,
    report_head,
    report_records,
    source_columns,
)
from mailmerge.report_chart import bucket_seconds, mailbox_colours, sends_chart
from mailmerge.store import Status, Store

STATUS_INFO: dict[Status, tuple[str, str]] = {
    Status.SENT: ("#16a34a", "accepted by Microsoft 365 for delivery"),
    Status.BOUNCED: ("#b91c1c", "accepted, then a non-delivery report came back"),
    Status.FAILED: ("#dc2626", "refused by Graph; not retried unless you run retry-failed"),
    Status.UNKNOWN: ("#d97706", "the answer was lost; resume checks Sent Items before resending"),
    Status.PENDING: ("#2563eb", "waiting to be sent"),
    Status.SENDING: ("#0891b2", "in flight (or left by a run that stopped)"),
    Status.INVALID: ("#9333ea", "the row cannot be sent as it is"),
    Status.SUPPRESSED: ("#64748b", "on a suppression list: never sent"),
    Status.DUPLICATE: ("#94a3b8", "the same key as an earlier row"),
}
STATUS_ORDER = list(STATUS_INFO)


def commands(text: str) -> Markup:
    """Escape ``text`` and show its `backquoted` commands as code."""
    parts = str(text).split("`")
    code = Markup("<code>{}</code>")
    return Markup("").join(code.format(p) if i % 2 else escape(p) for i, p in enumerate(parts))


@cache
def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("mailmerge", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["commands"] = commands
    return environment


def _when(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _iso_text(value: str | None) -> str:
    return value.replace("T", " ").replace("+00:00", " UTC") if value else ""


def _table_rows(
    records: Iterator[dict[str, Any]], sources: list[tuple[str, str]], counter: list[int]
) -> Iterator[dict[str, Any]]:
    for record in records:
        counter[0] += 1
        if record["status"] == Status.BOUNCED.value or record["bounce_code"]:
            problem_code, problem_text = record["bounce_code"], record["bounce_diagnostic"]
        else:
            problem_code, problem_text = record["error_code"], record["error_message"]
        fields = record.get("fields") or {}
        yield {
            "row": record["row"],
            "key": display_key(record["key"]),
            "email": record["email"],
            "name": record["name"] or "",
            "status": record["status"],
            "soft_bounce": record["status"] == Status.SENT.value and bool(record["bounce_code"]),
            "attempts": record["attempts"],
            "mailbox": record["mailbox"] or "",
            "last_attempt": _when(record["last_attempt_at"]),
            "sent": _when(record["sent_at"]),
            "problem_code": problem_code or "",
            "problem_text": problem_text or "",
            "fields": [fields.get(name, "") for _, name in sources],
        }


def _figures(by_status: dict[str, int]) -> list[dict[str, Any]]:
    total = sum(by_status.values())

    def share(n: int) -> str:
        return f"{100 * n / (total or 1):.1f}%"

    accepted = by_status["sent"] + by_status["bounced"]
    waiting = by_status["pending"] + by_status["sending"] + by_status["unknown"]
    by_design = by_status["invalid"] + by_status["suppressed"] + by_status["duplicate"]
    bounced, failed = by_status["bounced"], by_status["failed"]
    figures = [
        ("Recipients", total, "rows in the list", ""),
        ("Accepted for delivery", accepted, share(accepted), "good"),
        ("Bounced", bounced, share(bounced), "bad"),
        ("Failed", failed, share(failed), "bad"),
        ("Still to send", waiting, "pending, in flight or unknown", "wait"),
        ("Not sent by design", by_design, "invalid, suppressed, duplicate", ""),
    ]
    return [{"label": a, "value": b, "note": c, "tone": d} for a, b, c, d in figures]


def write_html(
    store: Store, campaign_id: int, campaign: str, out: IO[str], options: ReportOptions | None = None
) -> int:
    """Write the HTML report to ``out``; returns the number of rows in its recipient table."""
    options = options or ReportOptions()
    head = report_head(store, campaign_id, campaign, options)
    summary = head["summary"]
    by_status = summary["by_status"]
    total = summary["total"]
    breakdown = [
        {
            "status": status.value,
            "count": by_status[status.value],
            "share": 100 * by_status[status.value] / total if total else 0.0,
            "colour": STATUS_INFO[status][0],
            "meaning": STATUS_INFO[status][1],
        }
        for status in STATUS_ORDER
    ]
    mailboxes = summary["by_mailbox"]
    colours = mailbox_colours(mailboxes)
    first, last = store.sent_span(campaign_id)
    chart, unit = "", 0
    if first is not None and last is not None:
        unit = bucket_seconds(first, last)
        chart = sends_chart(store.sends_over_time(campaign_id, unit), unit, colours)
    sources = source_columns(store.field_names(campaign_id)) if options.with_columns else []
    counter = [0]
    records = islice(report_records(store, campaign_id, options), options.html_row_limit)
    context = {
        "campaign": campaign,
        "generated_at": _iso_text(head["generated_at"]),
        "first_sent": _iso_text(summary["first_sent_at"]),
        "last_sent": _iso_text(summary["last_sent_at"]),
        "figures": _figures(by_status),
        "breakdown": breakdown,
        "mailboxes": [
            {"mailbox": mailbox, "colour": colours[mailbox], "counts": per, "sent": per.get("sent", 0)}
            for mailbox, per in mailboxes.items()
        ],
        "chart": chart,
        "problems": summary["problems"],
        "colours": {status.value: info[0] for status, info in STATUS_INFO.items()},
        "filter": head["filter"]["status"] if head["filter"] else [],
        "included": summary["included"],
        "limit": options.html_row_limit,
        "truncated": summary["included"] > options.html_row_limit,
        "source_names": [name for _, name in sources],
        "rows": _table_rows(records, sources, counter),
        "campaign_file": options.campaign_file,
    }
    for chunk in _environment().get_template("report.html.j2").generate(context):
        out.write(chunk)
    return counter[0]

"""The Excel report: typed cells, a header row with an autofilter and frozen panes, a summary sheet.

openpyxl's write-only mode streams rows to a temporary file, so memory stays flat for a million rows.
Numbers are numbers and times are Excel datetimes (UTC: Excel has no time zones). Text that starts
like a formula is written as a text cell with Excel's quote prefix (what typing a leading apostrophe
does): shown exactly as it is, never evaluated, even after the cell is edited.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet._write_only import WriteOnlyWorksheet

from mailmerge.report import COLUMNS, FORMULA_STARTS, NUMBER_COLUMNS, TIME_COLUMNS

WIDTHS = {
    "row": 7,
    "key": 28,
    "email": 32,
    "name": 22,
    "status": 11,
    "attempts": 9,
    "mailbox": 28,
    "error_code": 24,
    "error_message": 44,
    "bounce_code": 12,
    "bounce_diagnostic": 44,
    "tag": 34,
}
TIME_WIDTH = 20
SOURCE_WIDTH = 18
HEADER_FONT = Font(bold=True, color="FFFFFF")
HEADER_FILL = PatternFill("solid", fgColor="1F4E79")


def _text(sheet: WriteOnlyWorksheet, value: str) -> Any:
    """A string as a cell: control characters Excel cannot store removed, formulas defused."""
    value = ILLEGAL_CHARACTERS_RE.sub("", value)
    if not value.startswith(FORMULA_STARTS):
        return value
    cell = WriteOnlyCell(sheet, value=value)
    cell.data_type = "s"
    cell.quotePrefix = True
    return cell


def _time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).replace(tzinfo=None)


def _cell(sheet: WriteOnlyWorksheet, column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in TIME_COLUMNS:
        return _time(value)
    if column in NUMBER_COLUMNS:
        return int(value)
    return _text(sheet, str(value))


def _header(sheet: WriteOnlyWorksheet, names: Iterable[str]) -> list[WriteOnlyCell]:
    cells = []
    for name in names:
        cell = WriteOnlyCell(sheet, value=ILLEGAL_CHARACTERS_RE.sub("", name))
        cell.data_type = "s"
        cell.quotePrefix = name.startswith(FORMULA_STARTS)
        cell.font = HEADER_FONT
        cell.fill = HEADER_FILL
        cell.alignment = Alignment(vertical="center")
        cells.append(cell)
    return cells


def write_xlsx(
    records: Iterable[dict[str, Any]],
    out: IO[bytes] | Path | str,
    *,
    sources: list[tuple[str, str]],
    head: dict[str, Any],
) -> int:
    """Write the recipients sheet (rows from :func:`mailmerge.report.report_records`) and a summary
    sheet to ``out``; returns the number of recipient rows."""
    book = Workbook(write_only=True)
    sheet = book.create_sheet("Recipients")
    header = [*COLUMNS, *(column for column, _ in sources)]
    for index, name in enumerate(header, start=1):
        width = TIME_WIDTH if name in TIME_COLUMNS else WIDTHS.get(name, SOURCE_WIDTH)
        sheet.column_dimensions[get_column_letter(index)].width = width
    sheet.freeze_panes = "A2"
    sheet.append(_header(sheet, header))
    count = 0
    for record in records:
        fields = record.get("fields") or {}
        sheet.append(
            [_cell(sheet, column, record[column]) for column in COLUMNS]
            + [_text(sheet, str(fields.get(name, ""))) for _, name in sources]
        )
        count += 1
    sheet.auto_filter.ref = f"A1:{get_column_letter(len(header))}{count + 1}"
    _summary_sheet(book.create_sheet("Summary"), head)
    book.save(out)
    return count


def _summary_sheet(sheet: WriteOnlyWorksheet, head: dict[str, Any]) -> None:
    summary = head["summary"]
    sheet.column_dimensions["A"].width = 30
    sheet.column_dimensions["B"].width = 14
    sheet.column_dimensions["C"].width = 60
    sheet.column_dimensions["D"].width = 80

    def line(*values: Any) -> None:
        sheet.append([_text(sheet, v) if isinstance(v, str) else v for v in values])

    line("Campaign", head["campaign"])
    line("Generated (UTC)", head["generated_at"])
    line("Times in this workbook are", "UTC")
    if head["filter"]:
        line("Rows filtered to status", ", ".join(head["filter"]["status"]))
    line("Recipients", summary["total"])
    line("Rows in the Recipients sheet", summary["included"])
    line()
    sheet.append(_header(sheet, ["Status", "Recipients"]))
    for status, count in summary["by_status"].items():
        line(status, count)
    if summary["by_mailbox"]:
        line()
        sheet.append(_header(sheet, ["Mailbox", "Sent", "Other statuses"]))
        for mailbox, per in summary["by_mailbox"].items():
            others = ", ".join(f"{s}: {n}" for s, n in per.items() if s != "sent")
            line(mailbox, per.get("sent", 0), others)
    if summary["problems"]:
        line()
        sheet.append(_header(sheet, ["Problem (status / code)", "Recipients", "What happened", "What to do"]))
        for problem in summary["problems"]:
            label = problem["status"] + (" (soft bounce)" if problem["soft_bounce"] else "")
            if problem["code"]:
                label += f" / {problem['code']}"
            line(label, problem["count"], problem["what"], problem["fix"])

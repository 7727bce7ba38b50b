"""Spreadsheets as a person sees them: a header and rows of text, streamed from CSV or Excel.

This module knows file formats and nothing about mail. CSV files arrive in every encoding and with
every delimiter a spreadsheet program can write, so both are detected (or taken from the campaign
file); Excel cells are rendered the way Excel shows them (``3`` not ``3.0``, ``15%`` for a percentage
cell, ``2024-03-05`` for a date, never ``nan``). Rows keep the number a spreadsheet program shows
(the header is row 1) and, for CSV, the line of the file they start on, so every error can be found.
Nothing here holds more than one row at a time.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from mailmerge.errors import ConfigError, InputError

CSV_SUFFIXES = frozenset({".csv", ".txt", ".tsv"})
OPENPYXL_SUFFIXES = frozenset({".xlsx", ".xlsm"})
CALAMINE_SUFFIXES = frozenset({".xls", ".xlsb", ".ods"})
DELIMITER_CANDIDATES = (",", ";", "\t", "|")
SNIFF_BYTES = 64 * 1024
SCAN_BYTES = 1024 * 1024
_C1_UNDEFINED_IN_CP1252 = frozenset(b"\x81\x8d\x8f\x90\x9d")
_SEP_LINE = re.compile(r"^sep=(.)\r?\n?$")
_ZERO_PADDED = re.compile(r"^0+$")
_PERCENT = re.compile(r"^0(?:\.(0+))?%$")
_ENCODING_NAMES = {
    "utf-8-sig": "UTF-8 with BOM",
    "utf-8": "UTF-8",
    "utf-16": "UTF-16",
    "utf-16-le": "UTF-16 (little-endian, no BOM)",
    "utf-16-be": "UTF-16 (big-endian, no BOM)",
    "utf-32": "UTF-32",
    "cp1252": "Windows-1252",
    "latin-1": "Latin-1",
}


@dataclass(frozen=True, slots=True)
class TableRow:
    """One row: its spreadsheet row number, the file line it starts on, and its cells as text."""

    row: int
    line: int
    cells: list[str]


@dataclass
class Table:
    """An open spreadsheet: how it was read, its header, and its remaining rows (an iterator)."""

    path: Path
    description: str
    header: list[str]
    rows: Iterator[TableRow]


def describe_delimiter(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


@contextmanager
def open_table(
    path: Path,
    *,
    sheet: str | int | None = None,
    encoding: str | None = None,
    delimiter: str | None = None,
    context: str = "[recipients] source",
) -> Iterator[Table]:
    """Open a CSV or Excel file for streaming; the file is closed when the block ends."""
    if not path.is_file():
        raise ConfigError(
            f"file not found: {path}", context=context, hint="the path is relative to the campaign file"
        )
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        with _open_csv(path, encoding=encoding, delimiter=delimiter) as table:
            yield table
    elif suffix in OPENPYXL_SUFFIXES:
        with _open_xlsx(path, sheet, context) as table:
            yield table
    elif suffix in CALAMINE_SUFFIXES:
        yield _open_calamine(path, sheet, context)
    else:
        raise ConfigError(
            f"cannot read {path.name}: use a .csv, .txt, .tsv, .xlsx, .xlsm, .xls, .xlsb or .ods file",
            context=context,
        )


# -- CSV -------------------------------------------------------------------------------------------


def detect_encoding(path: Path) -> str:
    """The encoding a CSV file is most likely in: a BOM decides; else UTF-16 by its zero bytes;
    else UTF-8 if the whole file decodes as UTF-8; else Windows-1252, or Latin-1 when a byte is
    undefined in Windows-1252. The whole file is scanned in blocks, so the answer holds for the
    last row too, and memory stays flat."""
    with path.open("rb") as raw:
        head = raw.read(SNIFF_BYTES)
        for bom, name in (
            (codecs.BOM_UTF8, "utf-8-sig"),
            (codecs.BOM_UTF32_LE, "utf-32"),
            (codecs.BOM_UTF32_BE, "utf-32"),
            (codecs.BOM_UTF16_LE, "utf-16"),
            (codecs.BOM_UTF16_BE, "utf-16"),
        ):
            if head.startswith(bom):
                return name
        if head.count(0) > len(head) // 4:
            odd_zeros = head[1::2].count(0)
            return "utf-16-le" if odd_zeros >= head[0::2].count(0) else "utf-16-be"
        raw.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        undefined = False
        utf8 = True
        while block := raw.read(SCAN_BYTES):
            if utf8:
                try:
                    decoder.decode(block)
                except UnicodeDecodeError:
                    utf8 = False
            if not utf8 and not _C1_UNDEFINED_IN_CP1252.isdisjoint(block):
                undefined = True
                break
        if utf8:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                utf8 = False
    if utf8:
        return "utf-8"
    return "latin-1" if undefined else "cp1252"


def detect_delimiter(first_line: str) -> str:
    """The candidate delimiter used most often in the header line, outside quotes (``,`` if none)."""
    counts = dict.fromkeys(DELIMITER_CANDIDATES, 0)
    quoted = False
    for char in first_line:
        if char == '"':
            quoted = not quoted
        elif char in ("\n", "\r") and not quoted:
            break
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(DELIMITER_CANDIDATES, key=lambda d: counts[d])
    return best if counts[best] else ","


@contextmanager
def _open_csv(path: Path, *, encoding: str | None, delimiter: str | None) -> Iterator[Table]:
    codec = encoding or detect_encoding(path)
    with path.open("rb") as raw:
        text = io.TextIOWrapper(raw, encoding=codec, newline="")
        try:
            first = text.readline()
        except UnicodeDecodeError as exc:
            raise _decode_error(path, codec, 1, exc) from exc
        offset = 0
        sep_line = _SEP_LINE.match(first)
        if sep_line:  # Excel's hint line, which Excel itself hides: the header comes next
            chosen = delimiter or sep_line.group(1)
            offset = 1
            start = ""
        else:
            chosen = delimiter or detect_delimiter(first)
            start = first
        reader = csv.reader(_chain(start, text), delimiter=chosen, strict=True)
        rows = _csv_rows(path, codec, reader, offset)
        header_row = next(rows, None)
        if header_row is None:
            raise InputError(f"{path.name} is empty: it needs a header row", context=str(path))
        description = f"{_ENCODING_NAMES.get(codec, codec)}, {describe_delimiter(chosen)}-separated"
        yield Table(path=path, description=description, header=header_row.cells, rows=rows)


def _chain(first: str, rest: io.TextIOWrapper) -> Iterator[str]:
    if first:
        yield first
    yield from rest


def _csv_rows(path: Path, codec: str, reader: Any, offset: int) -> Iterator[TableRow]:
    number = 0
    start_line = offset + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _csv_error(path, start_line, reader.line_num + offset, str(exc)) from exc
        except UnicodeDecodeError as exc:
            raise _decode_error(path, codec, reader.line_num + offset + 1, exc) from exc
        number += 1
        yield TableRow(row=number, line=start_line, cells=cells)
        start_line = offset + reader.line_num + 1


def _csv_error(path: Path, start: int, end: int, reason: str) -> InputError:
    if "end of data" in reason or "field larger than field limit" in reason:
        message = f"{path.name}, line {start}: a quoted value that starts on this line is never closed"
        hint = 'close the quote, or double a quote inside a value ("")'
    elif "expected after" in reason:
        message = f"{path.name}, line {end}: a quote in the middle of a value ({reason})"
        hint = 'put the whole value in quotes and double the quotes inside it: "5"" screen"'
    elif "NUL" in reason:
        message = f"{path.name}, line {end}: the file contains NUL bytes"
        hint = 'is it a binary file, or UTF-16? say which encoding it uses: encoding = "utf-16"'
    else:
        message = f"{path.name}, line {end}: {reason}"
        hint = "check the file's format at that line"
    return InputError(message, context=str(path), hint=hint)


def _decode_error(path: Path, codec: str, line: int, exc: UnicodeDecodeError) -> InputError:
    line = _undecodable_line(path, codec) or line
    return InputError(
        f"{path.name}, line {line}: not valid {_ENCODING_NAMES.get(codec, codec)} text ({exc.reason})",
        context=str(path),
        hint='say which encoding the file uses under [recipients], e.g. encoding = "cp1252"',
    )


def _undecodable_line(path: Path, codec: str) -> int | None:
    """The first line that does not decode, for codecs whose line breaks are single bytes."""
    if codecs.lookup(codec).name.startswith(("utf-16", "utf-32")):
        return None
    with path.open("rb") as raw:
        for number, line in enumerate(raw, start=1):
            try:
                line.decode(codec)
            except UnicodeDecodeError:
                return number
    return None


# -- Excel -----------------------------------------------------------------------------------------


def cell_text(value: object, number_format: str | None = None) -> str:
    """A cell as Excel shows it: ``3`` not ``3.0``, ``TRUE``, ``15%``, ISO dates, never ``nan``.

    Text is returned as it is, spaces included; the reader of the table decides what to trim."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return _number_text(value, number_format or "General")
    if isinstance(value, datetime):
        if value.time() == time():
            return value.date().isoformat()
        return value.strftime("%Y-%m-%d %H:%M" if value.second == 0 else "%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.strftime("%H:%M" if value.second == 0 else "%H:%M:%S")
    if isinstance(value, timedelta):
        return str(value)
    return str(value)


def _number_text(value: float, number_format: str) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return ""
    percent = _PERCENT.match(number_format)
    if percent:
        decimals = len(percent.group(1) or "")
        return f"{value * 100:.{decimals}f}%"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        value = int(value)
    if isinstance(value, int):
        width = len(number_format) if _ZERO_PADDED.match(number_format) else 0
        return str(value).zfill(width) if value >= 0 else str(value)
    shown = format(value, ".15g")  # Excel keeps 15 significant digits: 0.1 + 0.2 shows as 0.3
    return repr(value) if "e" in shown else shown


@contextmanager
def _open_xlsx(path: Path, sheet: str | int | None, context: str) -> Iterator[Table]:
    import openpyxl  # slow to import; only Excel users pay for it
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise InputError(
            f"cannot read {path.name} as an Excel workbook: {exc}",
            context=str(path),
            hint="save it from Excel as .xlsx (or export CSV)",
        ) from exc
    try:
        names = workbook.sheetnames
        name = _pick_sheet(names, sheet, path, context)
        worksheet = workbook[name]
        worksheet.reset_dimensions()  # do not trust the file's own idea of its size
        rows = _xlsx_rows(path, worksheet.iter_rows())
        header_row = _first_nonempty(rows)
        if header_row is None:
            raise InputError(f"sheet {name!r} of {path.name} is empty: it needs a header row")
        yield Table(path=path, description=f"sheet {name!r}", header=header_row.cells, rows=rows)
    finally:
        workbook.close()


def _xlsx_rows(path: Path, cells_by_row: Iterator[tuple[Any, ...]]) -> Iterator[TableRow]:
    number = 0
    try:
        for cells in cells_by_row:
            number = next((c.row for c in cells if getattr(c, "row", None)), number + 1)
            texts = [
                ""
                if getattr(c, "data_type", None) == "e"
                else cell_text(c.value, getattr(c, "number_format", None))
                for c in cells
            ]
            yield TableRow(row=number, line=number, cells=texts)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, TypeError) as exc:  # a damaged sheet
        raise InputError(
            f"{path.name}, after row {number}: the workbook is damaged ({exc.__class__.__name__}: {exc})",
            context=str(path),
            hint="open and save it again in Excel, or export it as CSV",
        ) from exc


def _open_calamine(path: Path, sheet: str | int | None, context: str) -> Table:
    from python_calamine import CalamineError, CalamineWorkbook

    try:
        workbook = CalamineWorkbook.from_path(str(path))
        name = _pick_sheet(list(workbook.sheet_names), sheet, path, context)
        data = workbook.get_sheet_by_name(name)
        first_row = data.start[0] + 1 if data.start else 1
        rows = _calamine_rows(data.iter_rows(), first_row)
    except CalamineError as exc:
        raise InputError(f"cannot read {path.name} as a spreadsheet: {exc}", context=str(path)) from exc
    header_row = _first_nonempty(rows)
    if header_row is None:
        raise InputError(f"sheet {name!r} of {path.name} is empty: it needs a header row")
    return Table(path=path, description=f"sheet {name!r}", header=header_row.cells, rows=rows)


def _calamine_rows(values: Iterator[list[Any]], first_row: int) -> Iterator[TableRow]:
    for number, cells in enumerate(values, start=first_row):
        yield TableRow(row=number, line=number, cells=[cell_text(v) for v in cells])


def _first_nonempty(rows: Iterator[TableRow]) -> TableRow | None:
    return next((r for r in rows if any(c.strip() for c in r.cells)), None)


def _pick_sheet(names: list[str], sheet: str | int | None, path: Path, context: str) -> str:
    if sheet is None:
        return names[0]
    if isinstance(sheet, int):
        if 0 <= sheet < len(names):
            return names[sheet]
        problem = f"{path.name} has no sheet number {sheet} (sheets are counted from 0)"
    else:
        found = next((n for n in names if n == sheet), None) or next(
            (n for n in names if n.strip().lower() == sheet.strip().lower()), None
        )
        if found:
            return found
        problem = f"{path.name} has no sheet named {sheet!r}"
    raise ConfigError(problem, context=context, hint=f"its sheets are {', '.join(map(repr, names))}")

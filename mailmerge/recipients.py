"""Reading the recipient list: CSV or Excel, streamed in chunks, each row checked before use.

Rows are yielded chunk by chunk so a list of a million rows never sits in memory at once. Each row
keeps its spreadsheet row number (the header is row 1, the first recipient row 2, as a spreadsheet
program shows it), so every problem can be reported where the user will look for it. Reading the
file itself (encodings, delimiters, Excel cell types) is :mod:`mailmerge.tables`' job; this module
turns rows into recipients: it names the columns, applies the ``where`` filter and checks the
address, display name and key of every row.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import pandas as pd
from email_validator import EmailNotValidError, validate_email

from mailmerge.campaign import Campaign, RecipientsSection
from mailmerge.errors import ConfigError, InputError
from mailmerge.tables import CSV_SUFFIXES, Table, TableRow, open_table

CHUNK_ROWS = 5_000
_NOT_IDENTIFIER = re.compile(r"[^0-9a-zA-Z]+")
#: Characters that end or fold a header line somewhere: CR, LF, other C0 controls, NEL, U+2028/9.
_HEADER_BREAKERS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_LEADING_ZERO = re.compile(r"^[+-]?0\d")


@dataclass(frozen=True, slots=True)
class Recipient:
    """One row of the list, as the rest of the pipeline sees it."""

    row: int
    key: str
    email: str
    name: str | None
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why one row cannot be sent, said where the user will look for it.

    ``email`` and ``fields`` carry what was read of the row (when anything was), so a row skipped
    with ``--skip-invalid`` can still be recorded and reported.
    """

    row: int
    column: str | None
    message: str
    email: str = field(default="", compare=False)
    fields: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __str__(self) -> str:
        column = f", column {self.column!r}" if self.column else ""
        return f"row {self.row}{column}: {self.message}"


@functools.lru_cache(maxsize=4096)
def identifier(column: str) -> str:
    """The template variable name for a column: ``"First Name"`` becomes ``first_name``.

    Cached: a list has a handful of columns and every row of a million asks for them again."""
    name = _NOT_IDENTIFIER.sub("_", column.strip()).strip("_").lower()
    if not name or name[0].isdigit():
        name = f"col_{name}"
    return name


def template_context(fields: dict[str, str]) -> dict[str, Any]:
    """The variables a template sees: each column as an identifier, and ``row`` by original name.

    An empty cell is left undefined, so that with ``StrictUndefined`` a template that needs it fails
    for that row ("Dear ," never goes out); optional values say so with ``{{ x | default("") }}``.
    """
    filled = {column: value for column, value in fields.items() if value != ""}
    context: dict[str, Any] = {identifier(column): value for column, value in filled.items()}
    context["row"] = filled
    return context


def header_breaker(value: str) -> str | None:
    """The first character of ``value`` that would break a mail header (a line break), if any."""
    found = _HEADER_BREAKERS.search(value)
    return found.group() if found else None


def check_address(raw: str, *, deliverability: bool = False) -> str:
    """The normalised form of one address; :class:`ValueError` says why it is not one.

    Internationalised addresses (``zoë@exämple.de``) are accepted; DNS is only asked when
    ``deliverability`` is set (``[recipients] check_deliverability = true``).
    """
    if header_breaker(raw):
        raise ValueError(f"{raw!r} contains a line break (header injection refused)")
    try:
        return validate_email(raw, check_deliverability=deliverability).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"{raw!r} is not a valid address: {exc}") from exc


@dataclass(frozen=True)
class _Columns:
    """Which header positions become which fields, and where the email, name and key are."""

    positions: list[tuple[int, str]]
    email: str
    name: str | None
    key: list[str]
    width: int


class RecipientSource:
    """The recipient list named by a campaign, read lazily in chunks.

    After (or while) iterating, ``description`` says how the file was read, ``warnings`` lists what
    was fixed on the way (column names with spaces around them, columns without a header) and
    ``filtered_out`` counts the rows the ``where`` filter left out.
    """

    def __init__(self, campaign: Campaign) -> None:
        self.settings: RecipientsSection = campaign.settings.recipients
        self.path = campaign.resolve(self.settings.source)
        self.description = ""
        self.columns: list[str] = []
        self.warnings: list[str] = []
        self.filtered_out = 0

    def chunks(self) -> Iterator[list[Recipient | RowProblem]]:
        """Every row in order, chunk by chunk, as a recipient or as the problem that stops it."""
        self.warnings, self.filtered_out = [], 0
        with open_table(
            self.path,
            sheet=self.settings.sheet,
            encoding=self.settings.encoding,
            delimiter=self.settings.delimiter,
        ) as table:
            self.description = table.description
            columns = self._columns(table)
            while batch := list(islice(table.rows, CHUNK_ROWS)):
                yield self._chunk(table, columns, batch)

    # -- columns -----------------------------------------------------------------------------------

    def _columns(self, table: Table) -> _Columns:
        name = self.path.name
        positions: list[tuple[int, str]] = []
        trimmed: list[str] = []
        last_named = max((i for i, raw in enumerate(table.header) if raw.strip()), default=-1)
        for index, raw in enumerate(table.header):
            column = raw.strip()
            if not column:
                if index < last_named:
                    self.warnings.append(
                        f"{name}: column {_letters(index)} has no header; its values are ignored"
                    )
                continue
            if column != raw:
                trimmed.append(repr(raw))
            positions.append((index, column))
        if trimmed:
            self.warnings.append(f"{name}: spaces around the column names {', '.join(trimmed)} were trimmed")
        names = [column for _, column in positions]
        repeated = sorted({c for c in names if names.count(c) > 1})
        if repeated:
            raise InputError(
                f"{name}: the column name {', '.join(map(repr, repeated))} appears more than once",
                context=str(self.path),
                hint="give every column a distinct header",
            )
        by_identifier: dict[str, list[str]] = {}
        for column in names:
            by_identifier.setdefault(identifier(column), []).append(column)
        clashes = [group for group in by_identifier.values() if len(group) > 1]
        if clashes:
            described = "; ".join(" and ".join(map(repr, group)) for group in clashes)
            raise InputError(
                f"{name}: columns {described} would share one template variable",
                context=str(self.path),
                hint="rename one of them so that {{ variable }} names can tell them apart",
            )
        if "row" in by_identifier:
            self.warnings.append(
                f"{name}: column {by_identifier['row'][0]!r} is only reachable as row[...] in templates: "
                "`row` is the dictionary of all columns"
            )
        wanted = [self.settings.email, *self.settings.key_columns]
        if self.settings.name:
            wanted.append(self.settings.name)
        found = {w: _find_column(w, names) for w in wanted}
        missing = [w for w, column in found.items() if column is None]
        if missing:
            raise InputError(
                f"{name}: no column named {', '.join(map(repr, missing))}",
                context=str(self.path),
                hint=f"the columns are {', '.join(map(repr, names))}; fix [recipients] or the header",
            )
        self.columns = names
        return _Columns(
            positions=positions,
            email=str(found[self.settings.email]),
            name=found[self.settings.name] if self.settings.name else None,
            key=[str(found[k]) for k in self.settings.key_columns],
            width=len(table.header),
        )

    # -- rows --------------------------------------------------------------------------------------

    def _chunk(self, table: Table, columns: _Columns, batch: list[TableRow]) -> list[Recipient | RowProblem]:
        read: list[tuple[TableRow, dict[str, str], RowProblem | None]] = []
        for raw in batch:
            if not any(cell.strip() for cell in raw.cells):
                continue  # an empty row, as spreadsheets leave at the end: not a recipient
            fields = {
                column: (raw.cells[i].strip() if i < len(raw.cells) else "")
                for i, column in columns.positions
            }
            read.append((raw, fields, self._shape_problem(table, columns, raw, fields)))
        if self.settings.where and read:
            keep = self._where([fields for _, fields, _ in read], read[0][0].row, read[-1][0].row)
            kept = [entry for entry, wanted in zip(read, keep, strict=True) if wanted or entry[2]]
            self.filtered_out += len(read) - len(kept)
            read = kept
        return [problem or self._recipient(raw.row, columns, fields) for raw, fields, problem in read]

    @staticmethod
    def _shape_problem(
        table: Table, columns: _Columns, raw: TableRow, fields: dict[str, str]
    ) -> RowProblem | None:
        count = len(raw.cells)
        if table.path.suffix.lower() not in CSV_SUFFIXES:
            return None  # a spreadsheet has no ragged rows: cells beyond the header are ignored
        if count < columns.width:
            what = f"has {count} values but the header has {columns.width}"
        elif any(cell.strip() for cell in raw.cells[columns.width :]):
            what = (
                f"has {count} values but the header has {columns.width} (an unquoted delimiter in a value?)"
            )
        else:
            return None
        return RowProblem(
            raw.row,
            None,
            f"{table.path.name}, line {raw.line}: the row {what}",
            email=fields.get(columns.email, ""),
            fields=fields,
        )

    def _where(self, records: list[dict[str, str]], first: int, last: int) -> list[bool]:
        """Which rows pass ``[recipients] where`` (a pandas expression over the columns)."""
        frame = pd.DataFrame.from_records(records, columns=self.columns)
        for column in self.columns:
            frame[column] = _typed(frame[column])
        for column in self.columns:
            alias = identifier(column)
            if alias not in frame.columns:
                frame[alias] = frame[column]
        expression = str(self.settings.where)
        try:
            result = frame.eval(expression, engine="python")
        except Exception as exc:  # pandas raises many kinds for a bad expression
            raise ConfigError(
                f"the filter {expression!r} cannot be applied to rows {first}–{last}: "
                f"{exc.__class__.__name__}: {exc}",
                context="[recipients] where",
                hint="use column names (in `backticks` if they contain spaces) and quote text: "
                "country == 'NL' and age >= 18",
            ) from exc
        if not isinstance(result, pd.Series) or result.dtype != bool:
            raise ConfigError(
                f"the filter {expression!r} is not a condition (it gives {type(result).__name__})",
                context="[recipients] where",
                hint="compare something: country == 'NL'",
            )
        return [bool(value) for value in result]

    def _recipient(self, row: int, columns: _Columns, fields: dict[str, str]) -> Recipient | RowProblem:
        raw_email = fields[columns.email]
        if not raw_email:
            return RowProblem(row, columns.email, "the address is empty", fields=fields)
        try:
            email = check_address(raw_email, deliverability=self.settings.check_deliverability)
        except ValueError as exc:
            return RowProblem(row, columns.email, str(exc), email=raw_email, fields=fields)
        name = fields.get(columns.name) if columns.name else None
        if name and header_breaker(name):
            return RowProblem(
                row,
                columns.name,
                "the display name contains a line break (header injection refused)",
                email=email,
                fields=fields,
            )
        key_parts = []
        for column in columns.key:
            value = email.lower() if column == columns.email else fields[column]
            if not value:
                return RowProblem(
                    row,
                    column,
                    "the key column is empty, so this row cannot be tracked",
                    email=email,
                    fields=fields,
                )
            key_parts.append(value)
        return Recipient(row=row, key="\x1f".join(key_parts), email=email, name=name or None, fields=fields)


def _find_column(wanted: str, names: list[str]) -> str | None:
    """The column a setting names: exactly, else the one column with the same identifier."""
    if wanted in names:
        return wanted
    matches = [n for n in names if identifier(n) == identifier(wanted)]
    return matches[0] if len(matches) == 1 else None


def _typed(values: pd.Series) -> pd.Series:
    """Numbers where every filled cell is a number (and none has a leading zero, like a postcode),
    so that ``age >= 18`` compares numbers; otherwise the text as it is."""
    filled = values[values != ""]
    if filled.empty or not filled.map(lambda v: bool(_NUMBER.match(v)) and not _LEADING_ZERO.match(v)).all():
        return values
    return pd.to_numeric(values.where(values != ""), errors="coerce")


def _letters(index: int) -> str:
    """A spreadsheet column letter for a 0-based index: 0 → A, 26 → AA."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(65 + remainder) + letters
    return letters

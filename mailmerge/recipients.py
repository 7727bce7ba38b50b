"""Reading the recipient list: CSV or Excel, streamed in chunks, each row checked before use.

Rows are yielded chunk by chunk so a list of a million rows never sits in memory at once. Each row
keeps its spreadsheet row number (the header is row 1, the first recipient row 2, as a spreadsheet
program shows it), so every problem can be reported where the user will look for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from email_validator import EmailNotValidError, validate_email

from mailmerge.campaign import Campaign
from mailmerge.errors import ConfigError, InputError

CHUNK_ROWS = 5_000
_NOT_IDENTIFIER = re.compile(r"[^0-9a-zA-Z]+")


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
    """Why one row cannot be sent, said where the user will look for it."""

    row: int
    column: str | None
    message: str

    def __str__(self) -> str:
        column = f", column {self.column!r}" if self.column else ""
        return f"row {self.row}{column}: {self.message}"


def identifier(column: str) -> str:
    """The template variable name for a column: ``"First Name"`` becomes ``first_name``."""
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


def _cell_text(value: object) -> str:
    """A cell as a person would write it: no ``3.0`` for 3, no ``nan`` for an empty cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == datetime.min.time() else value.isoformat(" ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


class RecipientSource:
    """The recipient list named by a campaign, read lazily in chunks."""

    def __init__(self, campaign: Campaign) -> None:
        self.settings = campaign.settings.recipients
        self.path = campaign.resolve(self.settings.source)

    def _frames(self) -> Iterator[pd.DataFrame]:
        suffix = self.path.suffix.lower()
        if not self.path.exists():
            raise ConfigError(
                f"recipient list not found: {self.path}",
                context="[recipients] source",
                hint="the path is relative to the campaign file",
            )
        try:
            if suffix in {".csv", ".txt"}:
                yield from pd.read_csv(
                    self.path,
                    dtype=str,
                    keep_default_na=False,
                    chunksize=CHUNK_ROWS,
                    encoding=self.settings.encoding or "utf-8-sig",
                    skipinitialspace=False,
                )
            elif suffix in {".xlsx", ".xlsm"}:
                sheet = self.settings.sheet if self.settings.sheet is not None else 0
                frame = pd.read_excel(self.path, sheet_name=sheet, dtype=object, engine="openpyxl")
                for start in range(0, len(frame), CHUNK_ROWS):
                    yield frame.iloc[start : start + CHUNK_ROWS]
            else:
                raise ConfigError(
                    f"cannot read {self.path.name}: only .csv and .xlsx recipient lists are supported",
                    context="[recipients] source",
                )
        except UnicodeDecodeError as exc:
            raise InputError(
                f"{self.path} is not {self.settings.encoding or 'UTF-8'} text: {exc.reason}",
                hint='say which encoding it uses, e.g. encoding = "cp1252" under [recipients]',
            ) from exc
        except (pd.errors.ParserError, ValueError) as exc:
            raise InputError(f"cannot read {self.path}: {exc}", hint="check the file's format") from exc

    def _check_columns(self, columns: list[str]) -> None:
        stripped = [column.strip() for column in columns]
        names = [identifier(column) for column in stripped]
        duplicates = sorted({c for c, n in zip(stripped, names, strict=True) if names.count(n) > 1})
        if duplicates:
            raise InputError(
                f"{self.path}: columns {', '.join(map(repr, duplicates))} have the same name",
                hint="give every column a distinct header",
            )
        wanted = {self.settings.email, *self.settings.key_columns}
        if self.settings.name:
            wanted.add(self.settings.name)
        missing = sorted(wanted - set(stripped))
        if missing:
            raise InputError(
                f"{self.path}: no column named {', '.join(map(repr, missing))}",
                hint=f"the columns are {', '.join(map(repr, stripped))}; fix [recipients] or the header",
            )

    def chunks(self) -> Iterator[list[Recipient | RowProblem]]:
        """Every row in order, chunk by chunk, as a recipient or as the problem that stops it."""
        next_row = 2
        checked = False
        for frame in self._frames():
            columns = [str(column).strip() for column in frame.columns]
            if not checked:
                self._check_columns(columns)
                checked = True
            chunk: list[Recipient | RowProblem] = []
            for values in frame.itertuples(index=False, name=None):
                fields = {column: _cell_text(value) for column, value in zip(columns, values, strict=True)}
                chunk.append(self._recipient(next_row, fields))
                next_row += 1
            yield chunk

    def _recipient(self, row: int, fields: dict[str, str]) -> Recipient | RowProblem:
        email_column = self.settings.email
        raw_email = fields[email_column]
        if not raw_email:
            return RowProblem(row, email_column, "the address is empty")
        try:
            email = validate_email(raw_email, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            return RowProblem(row, email_column, f"{raw_email!r} is not a valid address: {exc}")
        key_parts = []
        for column in self.settings.key_columns:
            value = email.lower() if column == email_column else fields[column]
            if not value:
                return RowProblem(row, column, "the key column is empty, so this row cannot be tracked")
            key_parts.append(value)
        name = fields.get(self.settings.name) if self.settings.name else None
        return Recipient(row=row, key="\x1f".join(key_parts), email=email, name=name or None, fields=fields)


def source_path(campaign: Campaign) -> Path:
    """Where the campaign's recipient list lives."""
    return campaign.resolve(campaign.settings.recipients.source)

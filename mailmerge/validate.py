"""Pre-flight, row by row: every row of the list is ready, a duplicate, suppressed, or invalid.

One pass decides every row's fate, in this order: a row that cannot be read as a recipient (bad
address, ragged CSV row) is invalid; a row whose key an earlier row already has is a duplicate (the
first row wins); a suppressed address is suppressed; otherwise the message is rendered and checked
(templates, headers, attachments, size) and the row is ready, or invalid with the reason. An
invalid row does not claim its key, so a later valid row with the same key can still be sent.

The same pass feeds ``mailmerge validate``, the pre-flight of ``run`` and the import into the store,
so all three agree about every row.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from mailmerge.campaign import Campaign
from mailmerge.recipients import Recipient, RecipientSource, RowProblem
from mailmerge.render import Renderer
from mailmerge.store import NewRecipient, Status
from mailmerge.suppression import SeenKeys, Suppression

PROBLEM_COLUMNS = ("row", "status", "email", "column", "problem")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True, slots=True)
class RowCheck:
    """One row's fate. ``status`` is PENDING for a row ready to send."""

    row: int
    status: Status
    email: str
    recipient: Recipient | None = None
    reason: str | None = None
    column: str | None = None
    size: int = 0
    upload_session: bool = False

    @property
    def problem(self) -> RowProblem:
        """The row's reason as a :class:`RowProblem` (for invalid rows)."""
        return RowProblem(self.row, self.column, self.reason or "", email=self.email)

    def for_store(self) -> Recipient | NewRecipient:
        """The row as it enters the store; rows never to be sent get a key of their own.

        The store keeps one row per (campaign, key): a duplicate or invalid row is recorded under
        ``key + "\\x1e" + row`` so the first row keeps the key and the report still shows every row.
        """
        if self.status is Status.PENDING and self.recipient is not None:
            return self.recipient
        if self.recipient is not None:
            recipient = self.recipient
            if self.status is not Status.SUPPRESSED:
                recipient = Recipient(
                    row=recipient.row,
                    key=f"{recipient.key}\x1e{recipient.row}",
                    email=recipient.email,
                    name=recipient.name,
                    fields=recipient.fields,
                )
        else:
            recipient = Recipient(
                row=self.row, key=f"\x1e{self.row}", email=self.email[:320], name=None, fields={}
            )
        return NewRecipient(recipient, self.status, self.reason)


def check_rows(
    campaign: Campaign,
    *,
    source: RecipientSource | None = None,
    renderer: Renderer | None = None,
    render: bool = True,
) -> Iterator[list[RowCheck]]:
    """Every row's fate, chunk by chunk in row order; ``render=False`` skips the message checks."""
    source = source or RecipientSource(campaign)
    if render and renderer is None:
        renderer = Renderer(campaign)
    suppression = Suppression.from_campaign(campaign)
    seen = SeenKeys()
    for chunk in source.chunks():
        checked: list[RowCheck] = []
        for entry in chunk:
            if isinstance(entry, RowProblem):
                checked.append(
                    RowCheck(
                        entry.row,
                        Status.INVALID,
                        entry.email,
                        _problem_recipient(entry),
                        entry.message,
                        entry.column,
                    )
                )
                continue
            checked.append(_check(entry, seen, suppression, renderer if render else None))
        yield checked


def _problem_recipient(problem: RowProblem) -> Recipient | None:
    if not problem.fields:
        return None
    return Recipient(
        row=problem.row, key="", email=problem.email[:320], name=None, fields=dict(problem.fields)
    )


def _check(
    recipient: Recipient, seen: SeenKeys, suppression: Suppression, renderer: Renderer | None
) -> RowCheck:
    digest = seen.digest(recipient.key)
    first = seen.first_row(digest)
    if first is not None:
        shown = recipient.key.replace("\x1f", " / ")
        return RowCheck(
            recipient.row,
            Status.DUPLICATE,
            recipient.email,
            recipient,
            f"the same key ({shown}) as row {first}",
        )
    suppressed = suppression.match(recipient.email)
    if suppressed:
        seen.add(digest, recipient.row)
        return RowCheck(
            recipient.row, Status.SUPPRESSED, recipient.email, recipient, f"suppressed: {suppressed}"
        )
    if renderer is None:
        seen.add(digest, recipient.row)
        return RowCheck(recipient.row, Status.PENDING, recipient.email, recipient)
    checked = renderer.check(recipient)
    if isinstance(checked, RowProblem):
        return RowCheck(
            recipient.row, Status.INVALID, recipient.email, recipient, checked.message, checked.column
        )
    seen.add(digest, recipient.row)
    return RowCheck(
        recipient.row,
        Status.PENDING,
        recipient.email,
        recipient,
        size=checked.size,
        upload_session=checked.upload_session,
    )


class ProblemsFile:
    """Every row that will not be sent, with why, as CSV (for ``validate --problems FILE``).

    Cells a spreadsheet would run as a formula are neutralised with a leading apostrophe.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: IO[str] | None = None
        self._writer: csv.DictWriter[str] | None = None

    def __enter__(self) -> ProblemsFile:
        self._file = self.path.open("w", encoding="utf-8", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=PROBLEM_COLUMNS)
        self._writer.writeheader()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._file is not None:
            self._file.close()

    def __call__(self, check: RowCheck) -> None:
        assert self._writer is not None
        self.count += 1
        self._writer.writerow(
            {
                "row": check.row,
                "status": check.status.value,
                "email": _cell(check.email),
                "column": _cell(check.column or ""),
                "problem": _cell(check.reason or ""),
            }
        )


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_STARTS) else value

"""Who must not be written to, and who was already seen: suppression lists and duplicate keys.

``[recipients] suppress`` names files of addresses (a CSV or Excel list with an email column, or a
plain list, one address a line) and patterns (``*@competitor.example``, ``@competitor.example``,
``ceo@*``). Matching ignores case, and an internationalised domain matches in either spelling.

:class:`SeenKeys` remembers every recipient key of a list in 12 bytes a row (a 64-bit hash and the
row number, in sorted numpy arrays), so a million-row list is checked for duplicates in a dozen
megabytes instead of the hundreds a set of strings would take.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re

import numpy as np
from email_validator import EmailNotValidError, validate_email

from mailmerge.campaign import Campaign
from mailmerge.recipients import identifier
from mailmerge.tables import open_table

_PATTERN_CHARS = re.compile(r"[*?\[]")
_EMAIL_COLUMNS = ("email", "e_mail", "email_address", "e_mail_address", "mail", "address")
FLUSH_KEYS = 4_096


def _spellings(address: str) -> set[str]:
    """The forms one address can be written in, lower-cased (Unicode and ASCII domain)."""
    lowered = address.strip().lower()
    forms = {lowered}
    try:
        valid = validate_email(lowered, check_deliverability=False)
    except EmailNotValidError:
        return forms
    forms.add(valid.normalized.lower())
    if valid.ascii_email:
        forms.add(valid.ascii_email.lower())
    return forms


class Suppression:
    """Addresses and patterns never to send to, each remembered with where it came from."""

    def __init__(self) -> None:
        self._addresses: dict[str, str] = {}
        self._patterns: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self._addresses) + len(self._patterns)

    def add(self, entry: str, source: str) -> None:
        entry = entry.strip()
        if not entry:
            return
        if entry.startswith("@"):
            entry = "*" + entry
        if _PATTERN_CHARS.search(entry):
            self._patterns.append((entry.lower(), source))
        else:
            for form in _spellings(entry):
                self._addresses.setdefault(form, source)

    def match(self, address: str) -> str | None:
        """Why ``address`` (as :func:`~mailmerge.recipients.check_address` normalised it) is
        suppressed (``"listed in unsubscribed.csv"``), or None."""
        if not self:
            return None
        lowered = address.strip().lower()
        if lowered in self._addresses:
            return f"listed in {self._addresses[lowered]}"
        for pattern, source in self._patterns:
            if fnmatch.fnmatchcase(lowered, pattern):
                where = "" if source == "[recipients] suppress" else f" in {source}"
                return f"matches {pattern!r}{where}"
        return None

    @classmethod
    def from_campaign(cls, campaign: Campaign) -> Suppression:
        """The campaign's suppression list, read in full (suppression lists are small)."""
        suppression = cls()
        for entry in campaign.settings.recipients.suppress:
            if "@" in entry:
                suppression.add(entry, "[recipients] suppress")
            else:
                suppression._read_file(campaign, entry)
        return suppression

    def _read_file(self, campaign: Campaign, entry: str) -> None:
        path = campaign.resolve(entry)
        with open_table(path, context="[recipients] suppress") as table:
            names = [identifier(cell) for cell in table.header]
            column = next((names.index(n) for n in _EMAIL_COLUMNS if n in names), None)
            if column is None:  # no recognisable header: a plain list, and its first line is an entry
                column = 0
                if table.header:
                    self.add(table.header[0], path.name)
            for row in table.rows:
                if column < len(row.cells):
                    self.add(row.cells[column], path.name)


class SeenKeys:
    """The keys met so far and the row each was first met on, in about 12 bytes a key.

    Keys are hashed to 64 bits (BLAKE2b); two different keys colliding among a million is a chance
    of about one in thirty million.
    """

    def __init__(self) -> None:
        self._hashes = np.empty(0, dtype=np.uint64)
        self._rows = np.empty(0, dtype=np.uint32)
        self._recent: dict[int, int] = {}

    @staticmethod
    def digest(key: str) -> int:
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")

    def first_row(self, digest: int) -> int | None:
        """The row the key with this digest was first met on, or None."""
        if digest in self._recent:
            return self._recent[digest]
        position = int(np.searchsorted(self._hashes, np.uint64(digest)))
        if position < len(self._hashes) and int(self._hashes[position]) == digest:
            return int(self._rows[position])
        return None

    def add(self, digest: int, row: int) -> None:
        """Remember the key with this digest as first met on ``row``."""
        self._recent[digest] = row
        if len(self._recent) >= FLUSH_KEYS:
            self._flush()

    def _flush(self) -> None:
        hashes = np.fromiter(self._recent.keys(), dtype=np.uint64, count=len(self._recent))
        rows = np.fromiter(self._recent.values(), dtype=np.uint32, count=len(self._recent))
        order = np.argsort(hashes)
        hashes, rows = hashes[order], rows[order]
        positions = np.searchsorted(self._hashes, hashes)
        self._hashes = np.insert(self._hashes, positions, hashes)
        self._rows = np.insert(self._rows, positions, rows)
        self._recent.clear()

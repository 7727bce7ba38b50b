"""Reading non-delivery reports (bounces) as Graph returns them from a mailbox's Inbox.

Pure: a Graph message resource in, what it says out. An NDR names the addresses that failed, each
with the receiving server's diagnostic and an enhanced status code (RFC 3463: ``5.x.x`` permanent,
``4.x.x`` temporary), and points at the message it is about: through the original's headers quoted
in its body (our ``X-MailMerge-Id`` tag among them, when the server quotes them), through
``In-Reply-To``/``References`` and a quoted ``Message-ID``. Two layouts are understood: Exchange
Online's ("Remote Server returned '550 5.1.1 ...'") and the standard delivery-status notification
(``Final-Recipient`` / ``Status`` / ``Diagnostic-Code``).
"""

from __future__ import annotations

import html
import itertools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailmerge.send.graph import TAG_HEADER, TAG_PROPERTY_ID

ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&*+/=?^_`{|}~'-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+"
)
ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
BASIC = re.compile(r"(?<!\d)([45])\d\d(?!\d)")
REMOTE_SERVER = re.compile(r"Remote Server returned '([^'\r\n]*)'", re.IGNORECASE)
TAG_IN_TEXT = re.compile(re.escape(TAG_HEADER) + r"\s*:\s*([0-9A-Fa-f]{32})\b")
MESSAGE_ID_IN_TEXT = re.compile(r"^\s*Message-ID\s*:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
MESSAGE_ID = re.compile(r"<[^<>\s]+>")
DSN_BLOCK = re.compile(r"^\s*(?:Final|Original)-Recipient\s*:", re.IGNORECASE | re.MULTILINE)
DSN_RECIPIENT = re.compile(
    r"Final-Recipient\s*:\s*(?:rfc822\s*;)?\s*<?([^\s<>;]+@[^\s<>;]+)>?", re.IGNORECASE
)
DSN_STATUS = re.compile(r"^\s*Status\s*:\s*([245]\.\d{1,3}\.\d{1,3})", re.IGNORECASE | re.MULTILINE)
DSN_DIAGNOSTIC = re.compile(
    r"^\s*Diagnostic-Code\s*:\s*(?:[\w-]+\s*;)?\s*(.+)$", re.IGNORECASE | re.MULTILINE
)
FAILED_LIST = re.compile(
    r"(?:Delivery has failed to these recipients or groups|couldn't be delivered to)[^\n]*\n(.*?)"
    r"(?:\n\s*\n\s*\n|Diagnostic information for administrators|$)",
    re.IGNORECASE | re.DOTALL,
)
NDR_SUBJECTS = (
    "undeliverable:",
    "undelivered mail returned to sender",
    "delivery status notification (failure)",
    "delivery status notification (delay)",
    "delivery has failed",
    "mail delivery failed",
    "returned mail:",
    "failure notice",
    "non remis",
    "unzustellbar:",
    "onbestelbaar:",
    "no se puede entregar:",
)
NDR_SENDERS = ("postmaster", "mailer-daemon", "microsoftexchange")


@dataclass(frozen=True, slots=True)
class FailedAddress:
    """One address an NDR reports as not delivered."""

    address: str
    code: str | None  # enhanced status code, e.g. "5.1.1"
    diagnostic: str  # the server's words, e.g. "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"

    @property
    def hard(self) -> bool:
        """Permanent (5.x.x) unless the codes say temporary (4.x.x); no code at all counts as hard,
        since a report that delivery *has failed* without a reason is final for that message."""
        if self.code:
            return not self.code.startswith("4")
        basic = BASIC.search(self.diagnostic)
        return not (basic and basic.group(1) == "4")


@dataclass(frozen=True, slots=True)
class NonDeliveryReport:
    """What one NDR in an Inbox says."""

    id: str
    mailbox: str
    received_at: float
    subject: str
    failed: tuple[FailedAddress, ...]
    tags: tuple[str, ...]  # X-MailMerge-Id values quoted from the original message
    original_ids: tuple[str, ...]  # internet message ids of the original message

    def failure_for(self, address: str) -> FailedAddress | None:
        """The failure reported for ``address``; the only one when the report names a single address
        (servers rewrite addresses), else None."""
        lowered = address.lower()
        found = next((f for f in self.failed if f.address.lower() == lowered), None)
        if found is None and len(self.failed) == 1:
            return self.failed[0]
        return found


def text_of(body: dict[str, Any] | None) -> str:
    """A message body as plain text: HTML tags dropped, block ends as line breaks, entities decoded."""
    if not body:
        return ""
    content = str(body.get("content") or "")
    if str(body.get("contentType", "text")).lower() != "html":
        return content.replace("\r\n", "\n")
    content = re.sub(r"(?is)<(style|script|head)\b.*?</\1\s*>", " ", content)
    content = re.sub(r"(?i)<br\s*/?>|</(p|div|tr|li|h\d|pre|table)\s*>", "\n", content)
    content = re.sub(r"(?s)<[^>]*>", "", content)
    return html.unescape(content).replace("\r\n", "\n").replace("\xa0", " ")


def headers_of(message: dict[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for header in message.get("internetMessageHeaders") or ():
        if isinstance(header, dict) and header.get("name"):
            found.setdefault(str(header["name"]).lower(), []).append(str(header.get("value") or ""))
    return found


def looks_like_ndr(message: dict[str, Any], headers: dict[str, list[str]]) -> bool:
    """Whether ``message`` is a non-delivery report rather than a reply or an auto-reply."""
    if "x-ms-exchange-message-is-ndr" in headers:
        return True
    if any("report-type=delivery-status" in v.lower() for v in headers.get("content-type", [])):
        return True
    subject = str(message.get("subject") or "").strip().lower()
    if subject.startswith(NDR_SUBJECTS):
        return True
    sender = ((message.get("from") or {}).get("emailAddress") or {}).get("address") or ""
    return str(sender).lower().split("@")[0] in NDR_SENDERS


def _code(text: str) -> str | None:
    match = ENHANCED.search(text)
    return ".".join(match.groups()) if match else None


def _exchange_failures(text: str) -> list[FailedAddress]:
    """``address`` ... ``Remote Server returned '<diagnostic>'``, as Exchange writes them."""
    failures: list[FailedAddress] = []
    start = 0
    for match in REMOTE_SERVER.finditer(text):
        addresses = ADDRESS.findall(text, start, match.start())
        if addresses:
            diagnostic = match.group(1).strip()
            failures.append(FailedAddress(addresses[-1].strip("'"), _code(diagnostic), diagnostic))
        start = match.end()
    return failures


def _dsn_failures(text: str) -> list[FailedAddress]:
    """RFC 3464 per-recipient blocks: ``Final-Recipient``, ``Status``, ``Diagnostic-Code``."""
    failures: list[FailedAddress] = []
    starts = [m.start() for m in DSN_BLOCK.finditer(text)] + [len(text)]
    for begin, end in itertools.pairwise(starts):
        block = text[begin:end]
        recipient = DSN_RECIPIENT.search(block)
        if recipient is None:
            continue
        status = DSN_STATUS.search(block)
        diagnostic = DSN_DIAGNOSTIC.search(block)
        words = diagnostic.group(1).strip() if diagnostic else (status.group(1) if status else "")
        failures.append(FailedAddress(recipient.group(1), status.group(1) if status else _code(words), words))
    return failures


def _listed_failures(text: str) -> list[FailedAddress]:
    """Addresses listed under "Delivery has failed to these recipients", with the report's one code."""
    listed = FAILED_LIST.search(text)
    if listed is None:
        return []
    code = _code(text)
    line = next((ln.strip() for ln in text.splitlines() if code and code in ln), "") if code else ""
    seen: dict[str, None] = dict.fromkeys(a.strip("'").lower() for a in ADDRESS.findall(listed.group(1)))
    return [FailedAddress(address, code, line or "delivery failed") for address in seen]


def parse_report(message: dict[str, Any], mailbox: str) -> NonDeliveryReport | None:
    """The NDR ``message`` is (a Graph message resource from ``mailbox``), or None if it is none."""
    headers = headers_of(message)
    if not looks_like_ndr(message, headers):
        return None
    text = text_of(message.get("body"))
    failures = _exchange_failures(text) or _dsn_failures(text) or _listed_failures(text)
    unique: dict[str, FailedAddress] = {}
    for failure in failures:
        unique.setdefault(failure.address.lower(), failure)
    tags = dict.fromkeys(t.lower() for t in TAG_IN_TEXT.findall(text))
    for value in headers.get(TAG_HEADER.lower(), []):
        tags.setdefault(value.strip().lower(), None)
    for prop in message.get("singleValueExtendedProperties") or ():
        if isinstance(prop, dict) and str(prop.get("id", "")).lower() == TAG_PROPERTY_ID.lower():
            tags.setdefault(str(prop.get("value", "")).lower(), None)
    originals: dict[str, None] = {}
    for name in ("in-reply-to", "references"):
        for value in headers.get(name, []):
            originals.update(dict.fromkeys(MESSAGE_ID.findall(value)))
    originals.update(dict.fromkeys(MESSAGE_ID_IN_TEXT.findall(text)))
    return NonDeliveryReport(
        id=str(message.get("id") or ""),
        mailbox=mailbox,
        received_at=_timestamp(message.get("receivedDateTime")),
        subject=str(message.get("subject") or ""),
        failed=tuple(unique.values()),
        tags=tuple(t for t in tags if t),
        original_ids=tuple(originals),
    )


def _timestamp(value: Any) -> float:
    if not value:
        return 0.0
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0

"""Mailboxes' contents: drafts, Sent Items, Inbox, upload sessions and the delivered record.

`accept` is the one place a message becomes "sent": it appends the ground-truth record
(`DeliveredMessage`), files the Sent Items copy (visible after the profile's delay, and only when
saveToSentItems is true), files a non-delivery report in the sender's Inbox for undeliverable
recipients, and hands the record to the outbox for persistence. The hot path keeps references to the
accepted message dict: no copies.
"""

from __future__ import annotations

import base64
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .validation import ext_property_key
from .wire import iso

FOLDERS = ("inbox", "sentitems", "drafts")


def new_item_id() -> str:
    """An id shaped like Exchange's: base64, long, ending in '=' (clients must URL-encode it)."""
    return "AAMkA" + base64.urlsafe_b64encode(secrets.token_bytes(30)).decode("ascii") + "="


def new_internet_message_id() -> str:
    return f"<{secrets.token_hex(12).upper()}@SANDBOX01.prod.outlook.com>"


@dataclass(slots=True)
class DeliveredMessage:
    """Ground truth: one message accepted for delivery. `message` is the normalised Graph JSON."""

    mailbox: str
    message: dict[str, Any]
    recipients: list[str]
    subject: str | None
    internet_message_id: str
    accepted_at: float
    extended_properties: dict[str, str]
    headers: dict[str, str]
    via: str  # "sendMail" | "draft-send" | "mime"
    sequence: int = 0
    id: str = ""
    app: str | None = None
    saved_to_sent_items: bool = True
    sent_item_id: str | None = None
    failed_recipients: dict[str, bool] = field(default_factory=dict)  # address -> hard bounce

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


@dataclass(slots=True)
class StoredItem:
    """A message in a folder, with what Graph shows about it besides its content."""

    id: str
    mailbox: str  # lower-cased address
    folder: str
    message: dict[str, Any]
    created_at: float
    visible_at: float
    internet_message_id: str
    is_draft: bool = False
    sent_at: float | None = None
    received_at: float | None = None
    immutable: bool = False
    sequence: int = 0
    uploads: list[dict[str, Any]] = field(default_factory=list)  # attachments added by upload sessions
    change_key: str = field(default_factory=lambda: secrets.token_urlsafe(12))

    def ext_values(self) -> dict[tuple[str, ...], str]:
        found: dict[tuple[str, ...], str] = {}
        for prop in self.message.get("singleValueExtendedProperties", ()):
            key = ext_property_key(prop.get("id", ""))
            if key is not None:
                found[key] = prop.get("value", "")
        return found


@dataclass
class UploadSession:
    id: str
    secret: str
    item: StoredItem
    app_key: tuple[str, str]
    attachment: dict[str, Any]
    size: int
    expires_at: float
    data: bytearray = field(default_factory=bytearray)


class MailStore:
    """All folders of all mailboxes. Mutated on the server loop; read by other threads under `lock`."""

    def __init__(self, sent_items_delay: Callable[[], float], ndr_delay: Callable[[], float]) -> None:
        self.lock = threading.Lock()
        self._sent_items_delay = sent_items_delay
        self._ndr_delay = ndr_delay
        self.items: dict[str, StoredItem] = {}
        self.folders: dict[tuple[str, str], list[StoredItem]] = {}
        self.ext_index: dict[tuple[str, tuple[str, ...], str], list[StoredItem]] = {}
        self.delivered: list[DeliveredMessage] = []
        self.sessions: dict[str, UploadSession] = {}
        self.undeliverable: dict[str, bool] = {}  # address -> hard
        self.on_accept: Callable[[DeliveredMessage], None] | None = None
        self.on_draft: Callable[[StoredItem, bool], None] | None = None  # (item, deleted)
        self._sequence = 0

    # -- filing ----------------------------------------------------------------------------------
    def file(self, item: StoredItem) -> None:
        with self.lock:
            self.items[item.id] = item
            self.folders.setdefault((item.mailbox, item.folder), []).append(item)
            if item.folder != "drafts":
                for key, value in item.ext_values().items():
                    self.ext_index.setdefault((item.mailbox, key, value), []).append(item)

    def unfile(self, item: StoredItem) -> None:
        with self.lock:
            if self.items.get(item.id) is item:  # an immutable id may already name the sent copy
                del self.items[item.id]
            folder = self.folders.get((item.mailbox, item.folder), [])
            if item in folder:
                folder.remove(item)

    def folder(self, mailbox: str, name: str) -> list[StoredItem]:
        return self.folders.get((mailbox, name), [])

    # -- sending ---------------------------------------------------------------------------------
    def accept(
        self,
        mailbox: str,
        message: dict[str, Any],
        addresses: list[str],
        headers: dict[str, str],
        via: str,
        now: float,
        save: bool,
        app: str | None,
        sent_item_id: str | None = None,
    ) -> DeliveredMessage:
        """Record a message as accepted for delivery (the 202) and file what follows from it."""
        message_id = message.get("internetMessageId") or new_internet_message_id()
        message["internetMessageId"] = message_id
        props = {p["id"]: p.get("value", "") for p in message.get("singleValueExtendedProperties", ())}
        failed = {a: self.undeliverable[a.lower()] for a in addresses if a.lower() in self.undeliverable}
        with self.lock:
            self._sequence += 1
            record = DeliveredMessage(
                mailbox=mailbox,
                message=message,
                recipients=addresses,
                subject=message.get("subject"),
                internet_message_id=message_id,
                accepted_at=now,
                extended_properties=props,
                headers=headers,
                via=via,
                sequence=self._sequence,
                id=secrets.token_hex(4),
                app=app,
                saved_to_sent_items=save,
                sent_item_id=(sent_item_id or new_item_id()) if save else None,
                failed_recipients=failed,
            )
            self.delivered.append(record)
        self._file_consequences(record)
        if self.on_accept is not None:
            self.on_accept(record)
        return record

    def restore(self, record: DeliveredMessage) -> None:
        """Bring back a record persisted by an earlier emulator process."""
        with self.lock:
            self._sequence = max(self._sequence, record.sequence)
            self.delivered.append(record)
        self._file_consequences(record)

    def _file_consequences(self, record: DeliveredMessage) -> None:
        mailbox = record.mailbox.lower()
        if record.saved_to_sent_items and record.sent_item_id:
            self.file(
                StoredItem(
                    id=record.sent_item_id,
                    mailbox=mailbox,
                    folder="sentitems",
                    message=record.message,
                    created_at=record.accepted_at,
                    visible_at=record.accepted_at + self._sent_items_delay(),
                    internet_message_id=record.internet_message_id,
                    sent_at=record.accepted_at,
                    received_at=record.accepted_at,
                    sequence=record.sequence,
                )
            )
        if record.failed_recipients:
            at = record.accepted_at + self._ndr_delay()
            self.file(
                StoredItem(
                    id=new_item_id(),
                    mailbox=mailbox,
                    folder="inbox",
                    message=non_delivery_report(record, at),
                    created_at=at,
                    visible_at=at,
                    internet_message_id=new_internet_message_id(),
                    sent_at=at,
                    received_at=at,
                    sequence=record.sequence,
                )
            )

    def snapshot(self) -> list[DeliveredMessage]:
        with self.lock:
            return list(self.delivered)


def non_delivery_report(original: DeliveredMessage, at: float) -> dict[str, Any]:
    """An NDR shaped like Exchange Online's: from Microsoft Outlook, quoting the original's id."""
    domain = original.mailbox.split("@")[-1]
    lines_html, lines_text = [], []
    for address, hard in original.failed_recipients.items():
        status = (
            "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"
            if hard
            else "550 4.4.7 QUEUE.Expired; message expired"
        )
        lines_text.append(f"{address}\r\nRemote server returned '{status}'")
        lines_html.append(f"<p><b>{address}</b><br>Remote server returned '{status}'</p>")
    subject = original.subject or ""
    text = (
        "Delivery has failed to these recipients or groups:\r\n\r\n"
        + "\r\n\r\n".join(lines_text)
        + "\r\n\r\nDiagnostic information for administrators:\r\n"
        "Generating server: SANDBOX01.prod.outlook.com"
        f"\r\n\r\nOriginal message headers:\r\nMessage-ID: {original.internet_message_id}\r\n"
        f"Subject: {subject}\r\nFrom: {original.mailbox}\r\nDate: {iso(original.accepted_at)}\r\n"
    )
    html_body = (
        "<html><body><p>Your message couldn't be delivered to these recipients:</p>"
        + "".join(lines_html)
        + f"<p>Diagnostic information for administrators:</p><pre>{text}</pre></body></html>"
    )
    postmaster = {"emailAddress": {"name": "Microsoft Outlook", "address": f"postmaster@{domain}"}}
    return {
        "subject": f"Undeliverable: {subject}",
        "body": {"contentType": "html", "content": html_body},
        "from": postmaster,
        "sender": postmaster,
        "toRecipients": [{"emailAddress": {"name": original.mailbox, "address": original.mailbox}}],
        "importance": "normal",
        "internetMessageHeaders": [
            {"name": "In-Reply-To", "value": original.internet_message_id},
            {"name": "References", "value": original.internet_message_id},
            {"name": "Content-Type", "value": "multipart/report; report-type=delivery-status"},
            {"name": "X-MS-Exchange-Message-Is-Ndr", "value": ""},
        ],
    }

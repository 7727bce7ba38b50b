"""Graph's wire format as mailmerge speaks it: messages, ``$batch`` requests and their answers.

Pure functions and data only (no I/O), so what goes on the wire can be tested byte for byte.
Every message carries a unique tag as a single-value extended property: Graph has no idempotency
key, and the tag is what lets a later run find out in Sent Items whether a message whose answer was
lost went out after all.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

#: The MAPI named property mailmerge tags every message with (a fixed GUID of our own).
TAG_PROPERTY_ID = "String {4f1a3c9e-7b2d-4e58-9a61-0c3d5e7f9b21} Name MailMergeId"
TAG_HEADER = "X-MailMerge-Id"
BATCH_PATH = "/$batch"
#: Graph refuses attachments of 3 MB or more inside a message; they go through an upload session.
UPLOAD_SESSION_BYTES = 3 * 1024 * 1024
#: Graph refuses a request body over 4 MB (a $batch counts as one request).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Upload chunks: at most 4 MB each, in multiples of 320 KiB as Graph recommends.
UPLOAD_CHUNK_BYTES = 12 * 320 * 1024


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox as Graph's ``emailAddress``: the address and an optional display name."""

    address: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file attached to a message; ``content_id`` makes it an inline (``cid:``) image."""

    name: str
    content_type: str
    content: bytes
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """Everything Graph needs for one recipient's message."""

    to_address: str
    to_name: str | None
    subject: str
    html: str | None
    text: str | None
    importance: str
    tag: str
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # custom x- headers, besides the tool's own tag header
    attachments: tuple[Attachment, ...] = ()

    @property
    def recipient_count(self) -> int:
        """To + Cc + Bcc: what Exchange counts against the daily recipient limit."""
        return 1 + len(self.cc) + len(self.bcc)


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One request inside a ``$batch``: its id, method, version-relative URL and JSON body."""

    id: str
    method: str
    url: str
    body: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ItemAnswer:
    """Graph's answer to one batch item (or to a plain request)."""

    status: int
    headers: dict[str, str]
    body: Any

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((str(v) for k, v in self.headers.items() if k.lower() == lowered), None)

    @property
    def error_code(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("code")) if isinstance(error, dict) and error.get("code") else None

    @property
    def error_message(self) -> str | None:
        error = self.body.get("error") if isinstance(self.body, dict) else None
        return str(error.get("message")) if isinstance(error, dict) and error.get("message") else None


def encoded_size(message: OutgoingMessage) -> int:
    """Roughly how many bytes the message takes in a JSON request (attachments grow by a third)."""
    text = len((message.html or "").encode()) + len((message.text or "").encode())
    return text + sum(4 * ((len(a.content) + 2) // 3) for a in message.attachments) + 2048


def needs_upload_session(message: OutgoingMessage) -> bool:
    """Whether the message must go as a draft with upload sessions instead of a plain ``sendMail``."""
    return any(len(a.content) >= UPLOAD_SESSION_BYTES for a in message.attachments) or (
        encoded_size(message) > MAX_REQUEST_BYTES // 2
    )


def mailbox_path(mailbox: str, *, delegated: bool = False) -> str:
    """The version-relative path of a sending mailbox.

    App-only tokens name the mailbox (``/users/{upn}``); a delegated token sends as the signed-in
    user (``/me``), whose mailbox the run has checked is the configured one.
    """
    return "/me" if delegated else f"/users/{quote(mailbox, safe='@')}"


def message_json(message: OutgoingMessage) -> dict[str, Any]:
    """The Graph ``message`` resource for one recipient.

    Graph's JSON message has one body; when both HTML and text templates exist, the HTML body is
    sent (every mail client that matters renders it) and the text is kept for previews.
    """
    if message.html is not None:
        body = {"contentType": "html", "content": message.html}
    else:
        body = {"contentType": "text", "content": message.text or ""}
    resource: dict[str, Any] = {
        "subject": message.subject,
        "body": body,
        "toRecipients": [_recipient(Address(message.to_address, message.to_name))],
        "importance": message.importance,
        "internetMessageHeaders": [{"name": TAG_HEADER, "value": message.tag}]
        + [{"name": name, "value": value} for name, value in message.headers],
        "singleValueExtendedProperties": [{"id": TAG_PROPERTY_ID, "value": message.tag}],
    }
    for key, addresses in (
        ("ccRecipients", message.cc),
        ("bccRecipients", message.bcc),
        ("replyTo", message.reply_to),
    ):
        if addresses:
            resource[key] = [_recipient(a) for a in addresses]
    if message.attachments:
        resource["attachments"] = [_file_attachment(a) for a in message.attachments]
    return resource


def _recipient(address: Address) -> dict[str, Any]:
    email: dict[str, str] = {"address": address.address}
    if address.name:
        email["name"] = address.name
    return {"emailAddress": email}


def _file_attachment(attachment: Attachment) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "name": attachment.name,
        "contentType": attachment.content_type,
        "contentBytes": base64.b64encode(attachment.content).decode("ascii"),
    }
    if attachment.content_id:
        resource["contentId"] = attachment.content_id
        resource["isInline"] = True
    return resource


def send_mail_item(
    item_id: str, sender: str, message: OutgoingMessage, *, save_to_sent_items: bool
) -> BatchItem:
    """A ``sendMail`` request for one message from ``sender`` (a :func:`mailbox_path`), as a batch item."""
    return BatchItem(
        id=item_id,
        method="POST",
        url=f"{sender}/sendMail",
        body={"message": message_json(message), "saveToSentItems": save_to_sent_items},
    )


def sent_items_lookup_item(item_id: str, sender: str, tag: str) -> BatchItem:
    """A query for the Sent Items copy of the message tagged ``tag`` (empty when it was not sent)."""
    expression = (
        f"singleValueExtendedProperties/Any(ep: ep/id eq '{TAG_PROPERTY_ID}' and ep/value eq '{tag}')"
    )
    query = f"$filter={quote(expression, safe='')}&$select=id,sentDateTime,internetMessageId&$top=1"
    return BatchItem(id=item_id, method="GET", url=f"{sender}/mailFolders('sentitems')/messages?{query}")


def batch_body(items: Sequence[BatchItem], *, sequential: bool) -> bytes:
    """The JSON of a ``$batch`` request.

    Graph runs at most four requests per mailbox at once and only accepts batches that are fully
    parallel or fully sequential, so a batch of more items than that is chained with ``dependsOn``:
    each in-flight batch then occupies one of the mailbox's four concurrency slots.
    """
    requests: list[dict[str, Any]] = []
    previous: str | None = None
    for item in items:
        request: dict[str, Any] = {"id": item.id, "method": item.method, "url": item.url}
        if item.body is not None:
            request["headers"] = {"Content-Type": "application/json"}
            request["body"] = item.body
        if sequential and previous is not None:
            request["dependsOn"] = [previous]
        requests.append(request)
        previous = item.id
    return json.dumps({"requests": requests}, ensure_ascii=False, separators=(",", ":")).encode()


class MalformedAnswer(ValueError):
    """Graph's answer could not be understood."""


def parse_batch(payload: bytes, expected_ids: Sequence[str]) -> dict[str, ItemAnswer]:
    """The per-item answers of a ``$batch`` response, by item id (they come in any order)."""
    try:
        document = json.loads(payload)
        answers = {
            str(entry["id"]): ItemAnswer(
                int(entry["status"]), dict(entry.get("headers") or {}), entry.get("body")
            )
            for entry in document["responses"]
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise MalformedAnswer(f"unreadable $batch answer: {exc}") from exc
    missing = set(expected_ids) - answers.keys()
    if missing:
        raise MalformedAnswer(f"$batch answer lacks items {sorted(missing)}")
    return answers


def parse_answer(status: int, headers: dict[str, str], payload: bytes) -> ItemAnswer:
    """A plain (non-batch) Graph answer; the body is JSON when there is one."""
    body: Any = None
    if payload:
        try:
            body = json.loads(payload)
        except ValueError:
            body = {"error": {"code": f"HTTP{status}", "message": payload[:200].decode("utf-8", "replace")}}
    return ItemAnswer(status, headers, body)

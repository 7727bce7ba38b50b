"""``mailmerge preview``: one recipient's message as it will go out, and an optional test send.

The preview is saved as an HTML file a browser opens (inline images embedded as ``data:`` URIs, since
a browser cannot resolve ``cid:``) and as an ``.eml`` file a mail client opens. A test send goes to
one address through the same sign-in and transport as ``run``, with ``[TEST]`` before the subject, a
tag of its own (``test-…``, so it is never taken for the recipient's message when a run reconciles
with Sent Items), without the real Cc and Bcc, and without being recorded in the state database.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from dataclasses import dataclass
from html import escape
from pathlib import Path

from mailmerge.campaign import Campaign
from mailmerge.dryrun import build_eml
from mailmerge.errors import InputError, SendError
from mailmerge.recipients import Recipient, RecipientSource, RowProblem, check_address
from mailmerge.render import RenderedMessage, Renderer
from mailmerge.send.engine import TokenSource
from mailmerge.send.graph import (
    Address,
    OutgoingMessage,
    mailbox_path,
    message_json,
    needs_upload_session,
    parse_answer,
)
from mailmerge.send.policy import Verdict
from mailmerge.send.transport import Transport, TransportError
from mailmerge.send.upload import DraftSender

TEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class Preview:
    """One recipient's rendered message."""

    recipient: Recipient
    message: RenderedMessage
    sender: str


def find_recipient(campaign: Campaign, *, row: int | None = None, email: str | None = None) -> Recipient:
    """The recipient on spreadsheet ``row``, or with address ``email``, or the first one."""
    wanted_email = email.strip().lower() if email else None
    if wanted_email:
        with contextlib.suppress(ValueError):  # not a valid address: look for it as written
            wanted_email = check_address(wanted_email).lower()
    first_problem: RowProblem | None = None
    for chunk in RecipientSource(campaign).chunks():
        for entry in chunk:
            address = entry.email.lower()
            if (row is not None and entry.row == row) or (wanted_email and address == wanted_email):
                if isinstance(entry, RowProblem):
                    raise InputError(
                        f"this row cannot be sent: {entry}", hint="fix the row, or preview another"
                    )
                return entry
            if row is None and wanted_email is None:
                if isinstance(entry, Recipient):
                    return entry
                first_problem = first_problem or entry
    if row is not None:
        raise InputError(
            f"no recipient on row {row}", hint="rows are numbered as a spreadsheet shows them (header = 1)"
        )
    if wanted_email:
        raise InputError(f"no recipient with the address {email}")
    raise InputError(
        "the list has no recipient that can be sent"
        + (f" (first problem: {first_problem})" if first_problem else "")
    )


def preview(
    campaign: Campaign, *, row: int | None = None, email: str | None = None, renderer: Renderer | None = None
) -> Preview:
    """Render one recipient's message; :class:`InputError` says why it cannot be."""
    recipient = find_recipient(campaign, row=row, email=email)
    rendered = (renderer or Renderer(campaign)).render(recipient)
    if isinstance(rendered, RowProblem):
        raise InputError(f"this row cannot be sent: {rendered}", hint="fix the row or the templates")
    return Preview(recipient=recipient, message=rendered, sender=campaign.mailboxes[0])


def save_preview(campaign: Campaign, shown: Preview, folder: Path) -> tuple[Path, Path]:
    """Write ``row-N.html`` (for a browser) and ``row-N.eml`` (for a mail client) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"row-{shown.recipient.row}"
    html_path, eml_path = folder / f"{stem}.html", folder / f"{stem}.eml"
    html = shown.message.html
    if html is None:
        text = escape(shown.message.text or "")
        html = (
            f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><pre>{text}</pre></body></html>'
        )
    for attachment in shown.message.attachments:
        if attachment.content_id:
            data = base64.b64encode(attachment.content).decode("ascii")
            html = html.replace(
                f"cid:{attachment.content_id}", f"data:{attachment.content_type};base64,{data}"
            )
    html_path.write_text(html, encoding="utf-8")
    eml_path.write_bytes(build_eml(campaign, shown.recipient, shown.message))
    return html_path, eml_path


def trial_message(campaign: Campaign, shown: Preview, to: str) -> OutgoingMessage:
    """The test copy of a preview, addressed to ``to`` only."""
    try:
        address = check_address(to)
    except ValueError as exc:
        raise InputError(f"--send-test-to: {exc}") from exc
    message = shown.message
    return OutgoingMessage(
        to_address=address,
        to_name=None,
        subject=f"[TEST] {message.subject}",
        html=message.html,
        text=message.text,
        importance=campaign.settings.message.importance,
        tag=f"test-{uuid.uuid4().hex}",
        reply_to=message.reply_to,
        headers=message.headers,
        attachments=message.attachments,
    )


async def send_test(
    campaign: Campaign, shown: Preview, to: str, *, transport: Transport, tokens: TokenSource
) -> OutgoingMessage:
    """Send the preview to ``to`` with one plain ``sendMail`` request (not saved to Sent Items), as
    the campaign's mailbox (``/users/{mailbox}``) or, with a delegated sign-in, as the user (``/me``)."""
    message = trial_message(campaign, shown, to)
    sender = mailbox_path(shown.sender, delegated=tokens.delegated)
    if needs_upload_session(message):
        # Too big for one request: a draft with upload sessions (Graph keeps a copy in Sent Items).
        drafts = DraftSender(
            transport,
            base_url=campaign.settings.graph.base_url,
            timeout=TEST_TIMEOUT,
            token=await tokens.token(),
            now=time.time(),
        )
        decision = await drafts.send(sender, message)
        if decision.verdict is not Verdict.SENT:
            raise SendError(
                f"Graph refused the test message: {decision.code} {decision.message or ''}".strip(),
                context=shown.sender,
            )
        return message
    body = json.dumps({"message": message_json(message), "saveToSentItems": False}).encode()
    url = campaign.settings.graph.base_url + sender + "/sendMail"
    for attempt in (1, 2):
        token = await tokens.token(force_refresh=attempt == 2)
        try:
            response = await transport.request(
                "POST",
                url,
                body=body,
                timeout=TEST_TIMEOUT,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
        except TransportError as exc:
            raise SendError(f"the test message could not be sent: {exc}", context=shown.sender) from exc
        if response.status == 202:
            return message
        answer = parse_answer(response.status, response.headers, response.body)
        if response.status != 401 or attempt == 2:
            raise SendError(
                f"Graph refused the test message: {response.status} {answer.error_code or ''} "
                f"{answer.error_message or ''}".strip(),
                context=shown.sender,
            )
    raise AssertionError("unreachable")


def describe(shown: Preview) -> list[tuple[str, str]]:
    """The headers of a preview as (name, value) lines, for printing."""
    message = shown.message

    def addresses(items: tuple[Address, ...]) -> str:
        return ", ".join(f"{a.name} <{a.address}>" if a.name else a.address for a in items)

    to = Address(shown.recipient.email, shown.recipient.name)
    lines = [("Row", str(shown.recipient.row)), ("From", shown.sender), ("To", addresses((to,)))]
    for name, items in (("Cc", message.cc), ("Bcc", message.bcc), ("Reply-To", message.reply_to)):
        if items:
            lines.append((name, addresses(items)))
    lines.append(("Subject", message.subject))
    lines.extend(message.headers)
    for attachment in message.attachments:
        kind = f"inline as cid:{attachment.content_id}" if attachment.content_id else "attachment"
        lines.append(
            (
                "Attachment",
                f"{attachment.name} ({attachment.content_type}, {len(attachment.content):,} bytes, {kind})",
            )
        )
    return lines

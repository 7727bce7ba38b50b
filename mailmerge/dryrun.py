"""``run --dry-run``: every rendered message as an ``.eml`` file, plus a manifest, and nothing sent.

The files are deterministic, so two dry runs of the same input are byte-identical and a diff shows
exactly what a change to the data or the templates does: the Date is fixed, the Message-ID and the
MIME boundaries are derived from the campaign and the row key, and headers are written in sorted
order. The manifest lists every row (row, key, address, status, file, SHA-256 of the file, reason),
including the duplicates, suppressed and invalid rows that get no file.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from pathlib import Path

from mailmerge.campaign import Campaign
from mailmerge.recipients import Recipient, RowProblem
from mailmerge.render import RenderedMessage, Renderer
from mailmerge.send.graph import TAG_HEADER, Address
from mailmerge.store import Status
from mailmerge.validate import check_rows

FIXED_DATE = "Sat, 01 Jan 2000 00:00:00 +0000"
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("row", "key", "email", "status", "file", "sha256", "reason")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _digest(campaign: Campaign, key: str) -> str:
    return hashlib.sha256(f"{campaign.name}\x00{key}".encode()).hexdigest()


def _header_address(address: Address) -> HeaderAddress:
    return HeaderAddress(display_name=address.name or "", addr_spec=address.address)


def build_eml(
    campaign: Campaign,
    recipient: Recipient,
    message: RenderedMessage,
    *,
    tag: str | None = None,
    to: Address | None = None,
) -> bytes:
    """One message as RFC 5322 bytes, deterministic for the same campaign, row key and rendering.

    Bcc is kept in the file so a reviewer sees it. ``From`` is the first sending mailbox (with
    several, the run picks one per message).
    """
    digest = _digest(campaign, recipient.key)
    importance = campaign.settings.message.importance
    headers: dict[str, object] = {
        "Date": FIXED_DATE,
        "From": HeaderAddress(addr_spec=campaign.mailboxes[0]),
        "Message-ID": f"<{digest[:32]}@mailmerge.invalid>",
        "Subject": message.subject,
        "To": _header_address(to or Address(recipient.email, recipient.name)),
        TAG_HEADER: tag or f"dryrun-{digest[:32]}",
    }
    for name, addresses in (("Cc", message.cc), ("Bcc", message.bcc), ("Reply-To", message.reply_to)):
        if addresses:
            headers[name] = [_header_address(a) for a in addresses]
    if importance != "normal":
        headers["Importance"] = importance
    headers.update(dict(message.headers))
    # 7-bit clean (quoted-printable or base64 bodies); UTF-8 headers only where an address needs them.
    for text_policy in (policy.SMTP.clone(cte_type="7bit"), policy.SMTPUTF8.clone(cte_type="7bit")):
        try:
            return _serialise(headers, message, digest, text_policy)
        except (UnicodeError, ValueError):
            continue
    raise ValueError("the message cannot be written as MIME")


def _serialise(
    headers: dict[str, object], message: RenderedMessage, digest: str, text_policy: policy.Policy
) -> bytes:
    mail = EmailMessage(policy=text_policy)
    for name in sorted(headers, key=str.lower):
        mail[name] = headers[name]
    inline = [a for a in message.attachments if a.content_id]
    files = [a for a in message.attachments if not a.content_id]
    if message.html is not None:
        mail.set_content(message.text or "", subtype="plain")
        mail.add_alternative(message.html, subtype="html")
        html_part = mail.get_payload()[-1]
        for image in inline:
            maintype, _, subtype = image.content_type.partition("/")
            html_part.add_related(
                image.content,
                maintype,
                subtype or "octet-stream",
                cid=f"<{image.content_id}>",
                filename=image.name,
                disposition="inline",
            )
    else:
        mail.set_content(message.text or "", subtype="plain")
    for attachment in files:
        maintype, _, subtype = attachment.content_type.partition("/")
        mail.add_attachment(attachment.content, maintype, subtype or "octet-stream", filename=attachment.name)
    for number, part in enumerate(p for p in mail.walk() if p.is_multipart()):
        part.set_boundary(f"=_mm_{digest[:24]}_{number}")
    return mail.as_bytes(policy=text_policy)


@dataclass
class DryRun:
    """What a dry run wrote."""

    folder: Path
    written: int = 0
    counts: dict[Status, int] = field(default_factory=dict)


def dry_run(campaign: Campaign, folder: Path, *, renderer: Renderer | None = None) -> DryRun:
    """Write ``row-NNNNNNN.eml`` for every ready row and ``manifest.csv`` for all rows into ``folder``.

    Files a previous dry run left there (``*.eml``, the manifest) are replaced; nothing else in the
    folder is touched. Nothing is recorded in the state database and nothing is sent.
    """
    renderer = renderer or Renderer(campaign)
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("row-*.eml"), folder / MANIFEST]:
        old.unlink(missing_ok=True)
    result = DryRun(folder=folder)
    with (folder / MANIFEST).open("w", encoding="utf-8", newline="") as out:
        manifest = csv.DictWriter(out, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        manifest.writeheader()
        for chunk in check_rows(campaign, renderer=renderer):
            for check in chunk:
                status, reason, name, sha = check.status, check.reason or "", "", ""
                if status is Status.PENDING and check.recipient is not None:
                    rendered = renderer.render(check.recipient)
                    if isinstance(rendered, RowProblem):
                        status, reason = Status.INVALID, rendered.message
                    else:
                        data = build_eml(campaign, check.recipient, rendered)
                        name = f"row-{check.row:07d}.eml"
                        (folder / name).write_bytes(data)
                        sha = hashlib.sha256(data).hexdigest()
                        result.written += 1
                result.counts[status] = result.counts.get(status, 0) + 1
                key = check.recipient.key.replace("\x1f", " / ") if check.recipient else ""
                manifest.writerow(
                    {
                        "row": check.row,
                        "key": _cell(key),
                        "email": _cell(check.email),
                        "status": status.value,
                        "file": name,
                        "sha256": sha,
                        "reason": _cell(reason),
                    }
                )
    return result


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_STARTS) else value

"""Harvesting bounces: non-delivery reports in the sending mailboxes' Inboxes, matched to recipients.

For each mailbox that sent the campaign, the Inbox is read page by page through Graph
(``GET /users/{mailbox}/mailFolders('inbox')/messages`` filtered on ``receivedDateTime``, following
``@odata.nextLink``; the app needs Mail.Read). Each NDR is matched to the recipient it is about, in
order of certainty:

1. the tool's tag (``X-MailMerge-Id``) quoted from the original message's headers;
2. the original's internet message id (``In-Reply-To``, ``References`` or a quoted ``Message-ID``),
   looked up in the mailbox's Sent Items, whose copy carries the tag as an extended property;
3. the failed address itself, among this campaign's recipients sent from that mailbox before the
   report arrived (the latest such one when the address was sent more than once).

A hard bounce (5.x.x) turns the recipient from ``sent`` to ``bounced``; a soft one (4.x.x) keeps it
``sent`` and records the diagnostic (see docs/reports.md). Recording is idempotent, so running this
again changes nothing unless new reports arrived. Graph is reached only through the project's
:class:`~mailmerge.send.transport.Transport` seam and token source, as sending is.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mailmerge.campaign import Campaign
from mailmerge.clock import Clock, SystemClock
from mailmerge.errors import AuthError, ConfigError, SendError
from mailmerge.ndr import NonDeliveryReport, parse_report
from mailmerge.report import iso, neutralise
from mailmerge.runner import campaign_id_of
from mailmerge.send.engine import TokenSource
from mailmerge.send.graph import TAG_PROPERTY_ID, mailbox_path
from mailmerge.send.policy import RetryPolicy, parse_retry_after
from mailmerge.send.transport import Transport, TransportError
from mailmerge.store import Bounce, Status, Store

PAGE_SIZE = 50
MAX_ATTEMPTS = 6
REQUEST_TIMEOUT = 60.0
EXAMPLES_KEPT = 20
INBOX_FIELDS = "id,subject,receivedDateTime,from,internetMessageId,internetMessageHeaders,body"
READ_HINT = (
    "reading bounces needs the Microsoft Graph application permission Mail.Read (API permissions → "
    "Add a permission → Application permissions → Mail.Read, then Grant admin consent); an application "
    "access policy may also limit which mailboxes the app can read"
)
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$", re.IGNORECASE)
_UNITS = {"m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}


@dataclass(frozen=True, slots=True)
class Unmatched:
    """An NDR (or one address of it) that could not be tied to a sent recipient of this campaign."""

    mailbox: str
    received_at: float
    subject: str
    addresses: tuple[str, ...]
    reason: str


@dataclass
class BounceHarvest:
    """What one run of ``bounces`` read and recorded."""

    mailboxes: list[str]
    since: float
    messages_read: int = 0
    reports: int = 0  # NDRs among the messages read
    hard: int = 0  # recipients newly recorded as bounced
    soft: int = 0  # soft bounces newly recorded (recipient stays sent)
    unchanged: int = 0  # reports already recorded by an earlier run
    matched: dict[str, int] = field(default_factory=lambda: {"tag": 0, "message-id": 0, "address": 0})
    not_sent: list[str] = field(default_factory=list)  # matched a recipient that is not `sent`
    unmatched: list[Unmatched] = field(default_factory=list)  # the first EXAMPLES_KEPT
    unmatched_count: int = 0
    sent_items_readable: bool = True

    def note_unmatched(self, item: Unmatched) -> None:
        self.unmatched_count += 1
        if len(self.unmatched) < EXAMPLES_KEPT:
            self.unmatched.append(item)

    def to_json(self) -> dict[str, Any]:
        return {
            "mailboxes": self.mailboxes,
            "since": iso(self.since),
            "messages_read": self.messages_read,
            "reports": self.reports,
            "recorded": {"hard": self.hard, "soft": self.soft, "already_recorded": self.unchanged},
            "matched_by": self.matched,
            "not_sent": self.not_sent,
            "unmatched": {
                "count": self.unmatched_count,
                "examples": [
                    {
                        "mailbox": u.mailbox,
                        "received_at": iso(u.received_at),
                        "subject": u.subject,
                        "addresses": list(u.addresses),
                        "reason": u.reason,
                    }
                    for u in self.unmatched
                ],
            },
            "sent_items_readable": self.sent_items_readable,
        }


def parse_since(text: str, now: float) -> float:
    """``--since``: an ISO 8601 date or time (UTC unless it says otherwise), or an age like ``7d``,
    ``12h``, ``90m`` or ``2w``."""
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2).lower()]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"cannot read --since {text!r}",
            hint="give a date or time such as 2024-05-01 or 2024-05-01T08:00, or an age such as 7d or 12h",
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class _GraphReader:
    """GET requests to Graph through the transport seam: a fresh token on 401, waits on 429 and 5xx."""

    def __init__(self, transport: Transport, tokens: TokenSource, clock: Clock) -> None:
        self.transport = transport
        self.tokens = tokens
        self.clock = clock
        self.policy = RetryPolicy(max_attempts=MAX_ATTEMPTS)

    async def get(self, url: str, *, what: str) -> tuple[int, Any]:
        """``(status, JSON body)``; raises only when the request cannot be made at all."""
        refresh = refreshed = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            token = await self.tokens.token(force_refresh=refresh)
            refresh = False
            try:
                response = await self.transport.request(
                    "GET",
                    url,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Accept": "application/json",
                        "Prefer": 'outlook.body-content-type="text"',
                    },
                    timeout=REQUEST_TIMEOUT,
                )
            except TransportError as exc:
                if attempt == MAX_ATTEMPTS:
                    raise SendError(
                        f"cannot reach Graph to read {what}: {exc}", hint="check the network and run again"
                    ) from exc
                await self.clock.sleep(self.policy.delay(attempt, None))
                continue
            body = _json(response.body)
            if response.status == 401 and not refreshed:
                refresh = refreshed = True
                continue
            if (response.status == 429 or response.status >= 500) and attempt < MAX_ATTEMPTS:
                wait = parse_retry_after(response.header("Retry-After"), self.clock.time())
                await self.clock.sleep(self.policy.delay(attempt, wait))
                continue
            return response.status, body
        raise AssertionError("unreachable")  # pragma: no cover


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        return None


def _error(body: Any) -> tuple[str, str]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or ""), str(error.get("message") or "")
    return "", ""


async def _inbox_reports(
    reader: _GraphReader, base_url: str, mailbox: str, since: float, harvest: BounceHarvest
) -> AsyncIterator[NonDeliveryReport]:
    """The NDRs in ``mailbox``'s Inbox received since ``since``, page by page."""
    stamp = datetime.fromtimestamp(int(since), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    query = (
        f"$filter={quote(f'receivedDateTime ge {stamp}', safe='')}&$select={INBOX_FIELDS}&$top={PAGE_SIZE}"
    )
    url: str | None = f"{base_url}{mailbox_path(mailbox)}/mailFolders('inbox')/messages?{query}"
    while url:
        status, body = await reader.get(url, what=f"the Inbox of {mailbox}")
        if status != 200 or not isinstance(body, dict):
            code, message = _error(body)
            detail = f"{code}: {message}" if code else f"HTTP {status}"
            if status in (401, 403):
                raise AuthError(f"Graph refused to read the Inbox of {mailbox} ({detail})", hint=READ_HINT)
            if status == 404:
                raise ConfigError(
                    f"Graph found no mailbox {mailbox} ({detail})",
                    hint="check [sender] in the campaign file",
                )
            raise SendError(f"cannot read the Inbox of {mailbox} ({detail})", hint="run the command again")
        for message in body.get("value") or ():
            harvest.messages_read += 1
            report = parse_report(message, mailbox) if isinstance(message, dict) else None
            if report is not None:
                harvest.reports += 1
                yield report
        url = body.get("@odata.nextLink")


async def _tag_in_sent_items(
    reader: _GraphReader, base_url: str, mailbox: str, message_id: str, harvest: BounceHarvest
) -> str | None:
    """The tag of the Sent Items copy of ``message_id``, if Graph lets us read it."""
    if not harvest.sent_items_readable:
        return None
    expression = f"internetMessageId eq '{message_id.replace(chr(39), chr(39) * 2)}'"
    expand = f"singleValueExtendedProperties($filter=id eq '{TAG_PROPERTY_ID}')"
    url = (
        f"{base_url}{mailbox_path(mailbox)}/mailFolders('sentitems')/messages"
        f"?$filter={quote(expression, safe='')}&$select=id,internetMessageId"
        f"&$expand={quote(expand, safe='()')}&$top=1"
    )
    status, body = await reader.get(url, what=f"the Sent Items of {mailbox}")
    if status in (401, 403):
        harvest.sent_items_readable = False
        return None
    if status != 200 or not isinstance(body, dict):
        return None
    for item in body.get("value") or ():
        for prop in item.get("singleValueExtendedProperties") or ():
            if str(prop.get("id", "")).lower() == TAG_PROPERTY_ID.lower() and prop.get("value"):
                return str(prop["value"]).lower()
    return None


async def harvest_bounces(
    store: Store,
    campaign_id: int,
    mailboxes: list[str],
    *,
    transport: Transport,
    tokens: TokenSource,
    graph_base_url: str,
    since: float,
    clock: Clock | None = None,
) -> BounceHarvest:
    """Read the NDRs that reached ``mailboxes`` since ``since`` and record them on the campaign."""
    reader = _GraphReader(transport, tokens, clock or SystemClock())
    base_url = graph_base_url.rstrip("/")
    harvest = BounceHarvest(mailboxes=list(mailboxes), since=since)
    bounces: list[Bounce] = []
    by_address: list[NonDeliveryReport] = []
    for mailbox in mailboxes:
        async for report in _inbox_reports(reader, base_url, mailbox, since, harvest):
            if not report.failed:
                harvest.note_unmatched(_unmatched(report, "no failed address could be read from the report"))
                continue
            recipient, tags = await _recipient_of(store, campaign_id, reader, base_url, report, harvest)
            if recipient is not None:
                _accept(harvest, bounces, report, recipient[0], recipient[1])
            elif tags:
                # it names the message it is about, and that message is not one of this campaign's
                harvest.note_unmatched(_unmatched(report, "about a message of another campaign"))
            else:
                by_address.append(report)
    _match_by_address(store, campaign_id, by_address, harvest, bounces)
    bounces.sort(key=lambda b: b.at)
    recorded = store.record_bounces(campaign_id, bounces)
    harvest.hard, harvest.soft, harvest.unchanged = recorded["hard"], recorded["soft"], recorded["unchanged"]
    return harvest


async def _recipient_of(
    store: Store,
    campaign_id: int,
    reader: _GraphReader,
    base_url: str,
    report: NonDeliveryReport,
    harvest: BounceHarvest,
) -> tuple[tuple[dict[str, Any], str] | None, list[str]]:
    """The recipient ``report`` is about, found by tag or original message id, and how; else None with
    the tags found (if any, the report is about a message of someone else)."""
    for tag in report.tags:
        found = store.recipient_by_tag(campaign_id, tag)
        if found is not None:
            return (found, "tag"), [tag]
    tags = list(report.tags)
    if tags:
        return None, tags
    for message_id in report.original_ids:
        tag = await _tag_in_sent_items(reader, base_url, report.mailbox, message_id, harvest)
        if tag is None:
            continue
        found = store.recipient_by_tag(campaign_id, tag)
        if found is not None:
            return (found, "message-id"), [tag]
        tags.append(tag)
    return None, tags


def _unmatched(report: NonDeliveryReport, reason: str, addresses: tuple[str, ...] | None = None) -> Unmatched:
    return Unmatched(
        mailbox=report.mailbox,
        received_at=report.received_at,
        subject=report.subject,
        addresses=addresses if addresses is not None else tuple(f.address for f in report.failed),
        reason=reason,
    )


def _accept(
    harvest: BounceHarvest,
    bounces: list[Bounce],
    report: NonDeliveryReport,
    recipient: dict[str, Any],
    how: str,
) -> None:
    failure = report.failure_for(recipient["email"])
    if failure is None:
        harvest.note_unmatched(
            _unmatched(report, f"about the message to {recipient['email']}, but it names other addresses")
        )
        return
    harvest.matched[how] += 1
    if recipient["status"] not in (Status.SENT.value, Status.BOUNCED.value):
        harvest.not_sent.append(
            f"{recipient['email']} is {recipient['status']}, not sent: `mailmerge resume` settles it first"
        )
        return
    bounces.append(
        Bounce(recipient["id"], failure.hard, failure.code, failure.diagnostic, report.received_at)
    )


def _match_by_address(
    store: Store,
    campaign_id: int,
    reports: list[NonDeliveryReport],
    harvest: BounceHarvest,
    bounces: list[Bounce],
) -> None:
    """Tie reports that carried no usable tag or message id to recipients by the failed address."""
    if not reports:
        return
    candidates = store.delivered_by_address(campaign_id, (f.address for r in reports for f in r.failed))
    for report in reports:
        missing = []
        for failure in report.failed:
            sent_before = [
                c
                for c in candidates.get(failure.address.lower(), [])
                if c["mailbox"]
                and c["mailbox"].lower() == report.mailbox.lower()
                and (c["sent_at"] or 0) <= report.received_at
            ]
            if not sent_before:
                missing.append(failure.address)
                continue
            recipient = max(sent_before, key=lambda c: c["sent_at"] or 0)
            harvest.matched["address"] += 1
            bounces.append(
                Bounce(recipient["id"], failure.hard, failure.code, failure.diagnostic, report.received_at)
            )
        if missing:
            harvest.note_unmatched(
                _unmatched(report, "no recipient of this campaign was sent to this address", tuple(missing))
            )


def campaign_mailboxes(campaign: Campaign, store: Store, campaign_id: int) -> list[str]:
    """The campaign's sending mailboxes, and any other that sent for it in earlier runs."""
    used = [
        m
        for m, per in store.counts_by_mailbox(campaign_id).items()
        if per[Status.SENT] or per[Status.BOUNCED]
    ]
    return list(dict.fromkeys([*campaign.mailboxes, *used]))


async def read_bounces(
    campaign: Campaign,
    store: Store,
    *,
    transport: Transport,
    tokens: TokenSource,
    since: float | None = None,
    clock: Clock | None = None,
) -> BounceHarvest:
    """Harvest the campaign's bounces from every mailbox it sent from; ``since`` defaults to when the
    campaign started."""
    campaign_id = campaign_id_of(campaign, store)
    start = since if since is not None else (store.campaign_created_at(campaign_id) or 0.0)
    return await harvest_bounces(
        store,
        campaign_id,
        campaign_mailboxes(campaign, store, campaign_id),
        transport=transport,
        tokens=tokens,
        graph_base_url=campaign.settings.graph.base_url,
        since=start,
        clock=clock,
    )


def export_suppressions(store: Store, campaign_id: int, path: Path) -> int:
    """Write the campaign's hard-bounced addresses to ``path`` for the next campaign's suppression list.

    A ``.txt`` file gets one address per line; any other a CSV with ``email`` first, then the bounce
    code, diagnostic and time (cells neutralised like the CSV report). Soft bounces are not included.
    """
    count = 0
    seen: set[str] = set()
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = None if path.suffix.lower() == ".txt" else csv.writer(out, lineterminator="\r\n")
        if writer is not None:
            writer.writerow(["email", "bounce_code", "bounce_diagnostic", "bounced_at"])
        for bounced in store.iter_bounced(campaign_id):
            address = bounced["email"].strip()
            if address.lower() in seen:
                continue
            seen.add(address.lower())
            if writer is None:
                out.write(address.replace("\n", "").replace("\r", "") + "\n")
            else:
                # The address stays as it is (a suppression list must match exactly); the server's
                # words are neutralised like the CSV report's.
                writer.writerow(
                    [
                        address,
                        neutralise(bounced["bounce_code"]),
                        neutralise(bounced["bounce_diagnostic"]),
                        iso(bounced["bounced_at"]),
                    ]
                )
            count += 1
    return count

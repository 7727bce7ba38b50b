"""Bounces: NDRs read from the sending mailboxes' Inboxes, matched to recipients and recorded once."""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner

from mailmerge.auth import token_source
from mailmerge.bounces import export_suppressions, harvest_bounces, parse_since, read_bounces
from mailmerge.campaign import load_campaign
from mailmerge.cli import main
from mailmerge.clock import ManualClock
from mailmerge.errors import AuthError
from mailmerge.ndr import parse_report
from mailmerge.recipients import Recipient
from mailmerge.runner import import_recipients, send
from mailmerge.send.graph import TAG_PROPERTY_ID, OutgoingMessage, message_json
from mailmerge.send.transport import AiohttpTransport, Response
from mailmerge.store import Bounce, Outcome, Status, Store
from tests.conftest import MakeCampaign

BASE = "https://graph.test/v1.0"
SENDER = "news@contoso.example"
START = 1_800_000_000.0


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exchange_text(address: str, diagnostic: str, *, message_id: str = "", tag: str = "") -> str:
    """The text of an NDR laid out as Exchange Online writes it."""
    headers = (f"Message-ID: {message_id}\n" if message_id else "") + (
        f"X-MailMerge-Id: {tag}\n" if tag else ""
    )
    return (
        "Delivery has failed to these recipients or groups:\n\n"
        f"{address}<mailto:{address}>\nThe email address you entered couldn't be found.\n\n"
        "Diagnostic information for administrators:\n\n"
        "Generating server: AM0PR01MB1234.eurprd01.prod.exchangelabs.com\n\n"
        f"{address}\nRemote Server returned '{diagnostic}'\n\n"
        f"Original message headers:\n\n{headers}From: {SENDER}\nSubject: Hello\n"
    )


def inbox_message(
    number: int, received: float, text: str, *, subject: str = "Undeliverable: Hello", **extra: Any
) -> dict[str, Any]:
    return {
        "id": f"AAMk{number}=",
        "subject": subject,
        "receivedDateTime": iso(received),
        "from": {"emailAddress": {"name": "Microsoft Outlook", "address": "postmaster@contoso.example"}},
        "body": {"contentType": "text", "content": text},
        "internetMessageHeaders": extra.pop("headers", []),
        **extra,
    }


class FakeTokens:
    def __init__(self) -> None:
        self.refreshed = 0

    async def token(self, *, force_refresh: bool = False) -> str:
        self.refreshed += force_refresh
        return "token-2" if self.refreshed else "token-1"


class FakeGraph:
    """An Inbox served in pages and a Sent Items lookup, through the Transport protocol."""

    def __init__(self, pages: list[list[dict[str, Any]]], sent: dict[str, str] | None = None) -> None:
        self.pages = pages
        self.sent = sent or {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.script: list[Response] = []

    async def request(
        self, method: str, url: str, *, headers: dict[str, str], body: bytes | None = None, timeout: float
    ) -> Response:
        self.requests.append((method, url, headers))
        if self.script:
            return self.script.pop(0)
        query = parse_qs(urlsplit(url).query)
        if "mailFolders('sentitems')" in url:
            wanted = query["$filter"][0].split("'")[1]
            tag = self.sent.get(wanted)
            value = (
                []
                if tag is None
                else [{"id": "x", "singleValueExtendedProperties": [{"id": TAG_PROPERTY_ID, "value": tag}]}]
            )
            return ok({"value": value})
        page = int(query.get("$skiptoken", ["0"])[0])
        document: dict[str, Any] = {"value": self.pages[page]}
        if page + 1 < len(self.pages):
            document["@odata.nextLink"] = (
                f"{BASE}/users/{SENDER}/mailFolders('inbox')/messages?$skiptoken={page + 1}"
            )
        return ok(document)

    async def close(self) -> None:
        return None


def ok(document: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, headers or {}, json.dumps(document).encode())


@pytest.fixture
def sent_campaign(tmp_path: Path) -> tuple[Store, ManualClock, int, dict[str, dict[str, Any]]]:
    """Six recipients sent from SENDER at START, one left unknown; by address: id, tag, status."""
    clock = ManualClock(START)
    store = Store(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    campaign_id = store.campaign_id("spring")
    assert campaign_id is not None
    people = [f"{name}@fabrikam.example" for name in ("ann", "bob", "cid", "dot", "eve", "fay")]
    store.import_recipients(
        campaign_id,
        [Recipient(row=i + 2, key=a, email=a, name=None, fields={}) for i, a in enumerate(people)],
    )
    claimed = store.claim(campaign_id, SENDER, 10, worker="w", lease_seconds=60)
    outcomes = [Outcome(c.id, Status.UNKNOWN if c.email.startswith("fay") else Status.SENT) for c in claimed]
    store.record(campaign_id, outcomes, worker="w")
    by_address = {r["email"]: r for r in store.iter_report(campaign_id)}
    yield store, clock, campaign_id, by_address
    store.close()


def harvest(
    store: Store, campaign_id: int, graph: FakeGraph, clock: ManualClock, tokens: FakeTokens | None = None
):
    return asyncio.run(
        harvest_bounces(
            store,
            campaign_id,
            [SENDER],
            transport=graph,
            tokens=tokens or FakeTokens(),
            graph_base_url=BASE,
            since=START,
            clock=clock,
        )
    )


# -- reading NDRs --------------------------------------------------------------------------------


def test_exchange_ndr_gives_address_code_tag_and_original_id() -> None:
    text = exchange_text(
        "Ann@Fabrikam.example",
        "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
        message_id="<AB12@contoso.example>",
        tag="0123456789abcdef0123456789ABCDEF",
    )
    report = parse_report(inbox_message(1, START, text), SENDER)
    assert report is not None
    (failure,) = report.failed
    assert (failure.address, failure.code, failure.hard) == ("Ann@Fabrikam.example", "5.1.1", True)
    assert failure.diagnostic == "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"
    assert report.tags == ("0123456789abcdef0123456789abcdef",)
    assert report.original_ids == ("<AB12@contoso.example>",)
    assert report.failure_for("ann@fabrikam.example") == failure


def test_standard_delivery_status_notification_and_soft_codes() -> None:
    text = (
        "This is the mail system.\n\nReporting-MTA: dns; mx.fabrikam.example\n\n"
        "Final-Recipient: rfc822; bob@fabrikam.example\nAction: delayed\nStatus: 4.2.2\n"
        "Diagnostic-Code: smtp; 452 4.2.2 Mailbox full\n\n"
        "Final-Recipient: rfc822; cid@fabrikam.example\nAction: failed\nStatus: 5.7.1\n"
        "Diagnostic-Code: smtp; 550 5.7.1 Rejected by policy\n"
    )
    message = inbox_message(
        2,
        START,
        text,
        subject="Delivery Status Notification (Failure)",
        headers=[
            {"name": "Content-Type", "value": "multipart/report; report-type=delivery-status"},
            {"name": "In-Reply-To", "value": "<orig@contoso.example>"},
        ],
    )
    report = parse_report(message, SENDER)
    assert report is not None
    assert [(f.address, f.code, f.hard) for f in report.failed] == [
        ("bob@fabrikam.example", "4.2.2", False),
        ("cid@fabrikam.example", "5.7.1", True),
    ]
    assert report.failed[0].diagnostic == "452 4.2.2 Mailbox full"
    assert report.original_ids == ("<orig@contoso.example>",)


def test_replies_and_auto_replies_are_not_bounces() -> None:
    reply = inbox_message(3, START, "Thanks, see you there!", subject="RE: Hello")
    reply["from"] = {"emailAddress": {"address": "ann@fabrikam.example"}}
    assert parse_report(reply, SENDER) is None
    ooo = inbox_message(4, START, "I am away until Monday.", subject="Automatic reply: Hello")
    ooo["from"] = {"emailAddress": {"address": "bob@fabrikam.example"}}
    assert parse_report(ooo, SENDER) is None


def test_since_accepts_dates_times_and_ages() -> None:
    assert parse_since("2027-01-15", START) == datetime(2027, 1, 15, tzinfo=UTC).timestamp()
    assert (
        parse_since("2027-01-15T08:30:00+01:00", START)
        == datetime(2027, 1, 15, 7, 30, tzinfo=UTC).timestamp()
    )
    assert parse_since("12h", START) == START - 12 * 3600
    assert parse_since("7d", START) == START - 7 * 86_400
    with pytest.raises(Exception, match="cannot read --since"):
        parse_since("last tuesday", START)


# -- matching and recording ----------------------------------------------------------------------


def test_bounces_are_matched_by_tag_message_id_and_address_and_recorded_once(
    sent_campaign: tuple[Store, ManualClock, int, dict[str, dict[str, Any]]], tmp_path: Path
) -> None:
    store, clock, campaign_id, people = sent_campaign
    later = START + 600
    hard = "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"
    pages = [
        [
            # tag quoted from the original's headers
            inbox_message(
                1,
                later,
                exchange_text("ann@fabrikam.example", hard, tag=people["ann@fabrikam.example"]["tag"]),
            ),
            # only the original message id: looked up in Sent Items
            inbox_message(
                2,
                later,
                exchange_text("bob@fabrikam.example", "550 4.4.7 QUEUE.Expired; message expired"),
                headers=[{"name": "In-Reply-To", "value": "<bob-msg@contoso.example>"}],
            ),
            inbox_message(
                3,
                later,
                "Thanks!",
                subject="RE: Hello",
                **{"from": {"emailAddress": {"address": "dot@fabrikam.example"}}},
            ),
        ],
        [
            # nothing but the address
            inbox_message(
                4, later, exchange_text("CID@fabrikam.example", "554 5.4.4 SMTPSEND.DNS.NonExistentDomain")
            ),
            # an address this campaign never sent to
            inbox_message(5, later, exchange_text("zed@elsewhere.example", hard)),
            # a message of another campaign (its Sent Items copy has a tag this campaign does not know)
            inbox_message(
                6,
                later,
                exchange_text("dot@fabrikam.example", hard),
                headers=[{"name": "References", "value": "<other@contoso.example>"}],
            ),
            # the recipient whose outcome is still unknown
            inbox_message(
                7,
                later,
                exchange_text("fay@fabrikam.example", hard, tag=people["fay@fabrikam.example"]["tag"]),
            ),
        ],
    ]
    sent_items = {
        "<bob-msg@contoso.example>": people["bob@fabrikam.example"]["tag"],
        "<other@contoso.example>": "f" * 32,
    }
    graph = FakeGraph(pages, sent_items)
    graph.script = [
        ok({"error": {"code": "InvalidAuthenticationToken", "message": "expired"}}, 401),
        ok({"error": {"code": "TooManyRequests"}}, 429, {"Retry-After": "7"}),
    ]
    tokens = FakeTokens()
    result = harvest(store, campaign_id, graph, clock, tokens)

    assert tokens.refreshed == 1 and clock.time() == START + 7  # a fresh token, then Retry-After honoured
    inbox_url = graph.requests[0][1]
    assert (
        "mailFolders('inbox')/messages" in inbox_url
        and "receivedDateTime%20ge%202027-01-15T08%3A00%3A00Z" in inbox_url
    )
    assert graph.requests[-1][2]["Authorization"] == "Bearer token-2"
    assert (result.messages_read, result.reports) == (7, 6)
    assert (result.hard, result.soft, result.unchanged) == (2, 1, 0)
    assert result.matched == {"tag": 2, "message-id": 1, "address": 1}
    assert [u.reason for u in result.unmatched] == [
        "about a message of another campaign",
        "no recipient of this campaign was sent to this address",
    ]
    assert result.unmatched[1].addresses == ("zed@elsewhere.example",)
    assert result.not_sent == [
        "fay@fabrikam.example is unknown, not sent: `mailmerge resume` settles it first"
    ]

    now = {r["email"]: r for r in store.iter_report(campaign_id)}
    assert now["ann@fabrikam.example"]["status"] == "bounced"
    assert (now["ann@fabrikam.example"]["bounce_code"], now["ann@fabrikam.example"]["bounce_diagnostic"]) == (
        "5.1.1",
        hard,
    )
    assert now["ann@fabrikam.example"]["bounced_at"] == later
    assert (now["bob@fabrikam.example"]["status"], now["bob@fabrikam.example"]["bounce_code"]) == (
        "sent",
        "4.4.7",
    )
    assert (now["cid@fabrikam.example"]["status"], now["cid@fabrikam.example"]["bounce_code"]) == (
        "bounced",
        "5.4.4",
    )
    assert [
        now[a]["status"] for a in ("dot@fabrikam.example", "eve@fabrikam.example", "fay@fabrikam.example")
    ] == ["sent", "sent", "unknown"]
    assert store.events_for(people["ann@fabrikam.example"]["id"])[-1]["code"] == "HardBounce"
    events = sum(len(store.events_for(r["id"])) for r in now.values())

    # running again records nothing new
    again = harvest(store, campaign_id, FakeGraph(pages, sent_items), clock)
    assert (again.hard, again.soft, again.unchanged) == (0, 0, 3)
    assert {r["email"]: r for r in store.iter_report(campaign_id)} == now
    assert sum(len(store.events_for(r["id"])) for r in now.values()) == events

    # a later hard bounce for the soft-bounced recipient makes it bounced
    worse = [
        [
            inbox_message(
                8,
                later + 3600,
                exchange_text("bob@fabrikam.example", hard, tag=people["bob@fabrikam.example"]["tag"]),
            )
        ]
    ]
    assert harvest(store, campaign_id, FakeGraph(worse), clock).hard == 1
    assert store.counts(campaign_id)[Status.BOUNCED] == 3

    csv_file, txt_file = tmp_path / "suppress.csv", tmp_path / "suppress.txt"
    assert export_suppressions(store, campaign_id, csv_file) == 3
    with csv_file.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["email"] for r in rows] == [
        "ann@fabrikam.example",
        "bob@fabrikam.example",
        "cid@fabrikam.example",
    ]
    assert rows[0]["bounce_code"] == "5.1.1"
    assert export_suppressions(store, campaign_id, txt_file) == 3
    assert txt_file.read_text(encoding="utf-8").split() == [r["email"] for r in rows]


def test_missing_mail_read_permission_is_a_clear_error(
    sent_campaign: tuple[Store, ManualClock, int, dict[str, dict[str, Any]]],
) -> None:
    store, clock, campaign_id, _ = sent_campaign
    graph = FakeGraph([[]])
    graph.script = [ok({"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}}, 403)]
    with pytest.raises(AuthError, match="refused to read the Inbox") as caught:
        harvest(store, campaign_id, graph, clock)
    assert "Mail.Read" in (caught.value.hint or "")
    assert store.counts(campaign_id)[Status.BOUNCED] == 0


# -- against the emulator ------------------------------------------------------------------------


def test_bounces_from_the_emulator(
    make_campaign: MakeCampaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = pytest.importorskip("mailmerge.sandbox")
    from mailmerge.rehearsal import rehearse

    people = ["ann", "bob", "cid", "dot", "eve"]
    rows = [
        {"email": f"{p}@fabrikam.example", "name": p.title(), "first_name": p.title(), "city": "Oslo"}
        for p in people
    ]
    campaign_file = make_campaign(rows, name="spring")
    profile = sandbox.Profile(
        ndr_delay_seconds=0.0,
        undeliverable=("ann@fabrikam.example", "bob@fabrikam.example", "zed@elsewhere.example"),
        soft_undeliverable=("cid@fabrikam.example",),
    )
    with rehearse(load_campaign(campaign_file), profile) as rehearsal:
        campaign = rehearsal.campaign
        store = Store(campaign.database_url)
        try:
            import_recipients(campaign, store)
            ca_file = campaign.settings.graph.ca_file

            async def send_and_stray() -> None:
                tokens = token_source(campaign, secret=rehearsal.secret)
                await send(campaign, store, transport=AiohttpTransport(ca_file=ca_file), tokens=tokens)
                # a message this campaign did not send, from the same mailbox, that bounces too
                stray = OutgoingMessage(
                    "zed@elsewhere.example", None, "Other", None, "hi", "normal", "e" * 32
                )
                transport = AiohttpTransport(ca_file=ca_file)
                answer = await transport.request(
                    "POST",
                    f"{campaign.settings.graph.base_url}/users/{SENDER}/sendMail",
                    headers={
                        "Authorization": f"Bearer {await tokens.token()}",
                        "Content-Type": "application/json",
                    },
                    body=json.dumps({"message": message_json(stray)}).encode(),
                    timeout=30,
                )
                await transport.close()
                assert answer.status == 202

            asyncio.run(send_and_stray())

            async def read() -> Any:
                transport = AiohttpTransport(ca_file=ca_file)
                try:
                    return await read_bounces(
                        campaign,
                        store,
                        transport=transport,
                        tokens=token_source(campaign, secret=rehearsal.secret),
                    )
                finally:
                    await transport.close()

            first = asyncio.run(read())
            assert (first.reports, first.hard, first.soft, first.unchanged) == (4, 2, 1, 0)
            assert first.matched["message-id"] == 3  # In-Reply-To, then the tag on the Sent Items copy
            assert [u.reason for u in first.unmatched] == ["about a message of another campaign"]
            statuses = {r["email"]: (r["status"], r["bounce_code"]) for r in store.iter_report(1)}
            assert statuses == {
                "ann@fabrikam.example": ("bounced", "5.1.1"),
                "bob@fabrikam.example": ("bounced", "5.1.1"),
                "cid@fabrikam.example": ("sent", "4.4.7"),
                "dot@fabrikam.example": ("sent", None),
                "eve@fabrikam.example": ("sent", None),
            }
            second = asyncio.run(read())
            assert (second.hard, second.soft, second.unchanged) == (0, 0, 3)
        finally:
            store.close()

    # the command, against a fresh emulator that restores what was delivered: nothing new, and the export
    monkeypatch.setattr("mailmerge.rehearsal.Profile", lambda: sandbox.Profile(ndr_delay_seconds=0.0))
    suppressions = tmp_path / "bounced.csv"
    result = CliRunner().invoke(
        main,
        ["bounces", str(campaign_file), "--sandbox", "--json", "--export-suppressions", str(suppressions)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["recorded"] == {"hard": 0, "soft": 0, "already_recorded": 3}
    assert summary["exported"] == 2
    with suppressions.open(encoding="utf-8", newline="") as handle:
        assert [r["email"] for r in csv.DictReader(handle)] == [
            "ann@fabrikam.example",
            "bob@fabrikam.example",
        ]


def test_exported_suppressions_feed_the_next_campaign(
    sent_campaign: tuple[Store, ManualClock, int, dict[str, dict[str, Any]]], make_campaign: MakeCampaign
) -> None:
    from mailmerge.suppression import Suppression

    store, _, campaign_id, people = sent_campaign
    diagnostic = "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found"
    store.record_bounces(
        campaign_id, [Bounce(people["bob@fabrikam.example"]["id"], True, "5.1.1", diagnostic, START + 60)]
    )
    campaign_file = make_campaign(name="next")
    export_suppressions(store, campaign_id, campaign_file.with_name("bounced.csv"))
    text = campaign_file.read_text(encoding="utf-8")
    campaign_file.write_text(
        text.replace('source = "people.csv"', 'source = "people.csv"\nsuppress = ["bounced.csv"]'),
        encoding="utf-8",
    )
    suppression = Suppression.from_campaign(load_campaign(campaign_file))
    assert suppression.match("Bob@fabrikam.example") is not None
    assert suppression.match("ann@fabrikam.example") is None

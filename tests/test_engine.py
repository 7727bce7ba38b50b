"""The engine's decisions, driven through an in-memory transport (the emulator tests cover the wire)."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import pytest

from mailmerge.campaign import load_campaign
from mailmerge.clock import ManualClock
from mailmerge.errors import SendError
from mailmerge.runner import build_engine, import_recipients, send_settings
from mailmerge.send.engine import SendSettings
from mailmerge.send.graph import TAG_PROPERTY_ID
from mailmerge.send.transport import Response, TransportError
from mailmerge.store import Status, Store

ItemRule = Callable[[str, dict], tuple[int, dict, dict | None, bool] | None]


class FakeGraph:
    """Answers ``$batch`` like Graph; ``rule(mailbox, request)`` may override an item's answer.

    A rule returns (status, headers, body, delivered) to inject an answer; ``delivered`` says whether
    the message still went out (the "accepted but answered with an error" case).
    """

    def __init__(self, rule: ItemRule | None = None) -> None:
        self.rule = rule
        self.delivered: list[tuple[str, str, str]] = []  # (mailbox, address, tag)
        self.tokens_seen: list[str] = []
        self.batches: list[list[dict]] = []

    async def request(
        self, method: str, url: str, *, headers: dict, body: bytes | None = None, timeout: float
    ) -> Response:
        self.tokens_seen.append(headers["Authorization"])
        requests = json.loads(body or b"{}")["requests"]
        self.batches.append(requests)
        responses, failed = [], set()
        for item in requests:
            if any(dep in failed for dep in item.get("dependsOn", [])):
                responses.append({"id": item["id"], "status": 424})
                failed.add(item["id"])
                continue
            mailbox = unquote(item["url"].split("/")[2])
            if item["method"] == "GET":
                tag = unquote(item["url"]).split("ep/value eq '")[1].split("'")[0]
                found = [{"id": "m"} for (m, _a, t) in self.delivered if m == mailbox and t == tag]
                responses.append({"id": item["id"], "status": 200, "body": {"value": found}})
                continue
            message = item["body"]["message"]
            address = message["toRecipients"][0]["emailAddress"]["address"]
            tag = next(
                p["value"] for p in message["singleValueExtendedProperties"] if p["id"] == TAG_PROPERTY_ID
            )
            override = self.rule(mailbox, item) if self.rule else None
            if override is None:
                self.delivered.append((mailbox, address, tag))
                responses.append({"id": item["id"], "status": 202})
                continue
            status, item_headers, item_body, delivered = override
            if delivered:
                self.delivered.append((mailbox, address, tag))
            if status == -1:
                raise TransportError("timeout", "injected", maybe_delivered=True)
            responses.append({"id": item["id"], "status": status, "headers": item_headers, "body": item_body})
            if status >= 400:
                failed.add(item["id"])
        random.Random(len(self.batches)).shuffle(responses)
        return Response(
            200, {"Content-Type": "application/json"}, json.dumps({"responses": responses}).encode()
        )

    async def close(self) -> None:
        return None


class Tokens:
    delegated = False

    def __init__(self) -> None:
        self.issued = 0

    async def token(self, *, force_refresh: bool = False) -> str:
        if force_refresh or not self.issued:
            self.issued += 1
        return f"token-{self.issued}"


def _run(path: Path, graph: FakeGraph, *, tokens: Tokens | None = None, **overrides) -> tuple[Store, dict]:
    campaign = load_campaign(path)
    clock = ManualClock()
    store = Store(campaign.database_url, clock=clock)
    import_recipients(campaign, store)
    base = send_settings(campaign)
    settings = SendSettings(**{**base.__dict__, "reconcile_after": 5, "reconcile_grace": 20, **overrides})
    engine = build_engine(
        campaign,
        store,
        transport=graph,
        tokens=tokens or Tokens(),
        settings=settings,
        rng=random.Random(1),
    )
    summary = asyncio.run(engine.run())
    return store, summary.counts


def _exactly_once(graph: FakeGraph, count: int) -> None:
    per_address = Counter(address for _m, address, _t in graph.delivered)
    assert len(per_address) == count
    assert set(per_address.values()) == {1}, per_address


def test_sends_everyone_once_in_chained_batches(make_campaign) -> None:
    rows = [
        {"email": f"p{i}@fabrikam.example", "name": f"P {i}", "first_name": f"P{i}", "city": "Oslo"}
        for i in range(45)
    ]
    graph = FakeGraph()
    _store, counts = _run(make_campaign(rows), graph)
    assert counts[Status.SENT] == 45
    _exactly_once(graph, 45)
    assert max(len(b) for b in graph.batches) == 20
    assert all(r.get("dependsOn") == [b[i - 1]["id"]] for b in graph.batches for i, r in enumerate(b) if i)


def test_lost_answer_for_delivered_message_is_not_resent(make_campaign) -> None:
    hit = set()

    def rule(mailbox: str, item: dict):
        address = item["body"]["message"]["toRecipients"][0]["emailAddress"]["address"]
        if address == "person3@fabrikam.example" and address not in hit:
            hit.add(address)
            return (504, {}, {"error": {"code": "GatewayTimeout", "message": "x"}}, True)
        return None

    graph = FakeGraph(rule)
    _store, counts = _run(make_campaign(), graph)
    assert counts[Status.SENT] == 5
    _exactly_once(graph, 5)


def test_lost_request_is_resent_after_grace(make_campaign) -> None:
    hit = set()

    def rule(mailbox: str, item: dict):
        address = item["body"]["message"]["toRecipients"][0]["emailAddress"]["address"]
        if address == "person2@fabrikam.example" and address not in hit:
            hit.add(address)
            return (503, {}, None, False)
        return None

    graph = FakeGraph(rule)
    _store, counts = _run(make_campaign(), graph)
    assert counts[Status.SENT] == 5
    _exactly_once(graph, 5)


def test_timeout_of_whole_batch_is_reconciled(make_campaign) -> None:
    calls = Counter()

    def rule(mailbox: str, item: dict):
        calls["n"] += 1
        return (-1, {}, None, True) if calls["n"] == 3 else None

    graph = FakeGraph(rule)
    _store, counts = _run(make_campaign(), graph)
    assert counts[Status.SENT] == 5
    _exactly_once(graph, 5)


def test_invalid_recipient_fails_alone(make_campaign) -> None:
    def rule(mailbox: str, item: dict):
        address = item["body"]["message"]["toRecipients"][0]["emailAddress"]["address"]
        if address == "person1@fabrikam.example":
            return (400, {}, {"error": {"code": "ErrorInvalidRecipients", "message": "bad"}}, False)
        return None

    graph = FakeGraph(rule)
    store, counts = _run(make_campaign(), graph)
    assert counts[Status.SENT] == 4 and counts[Status.FAILED] == 1
    failed = [r for r in store.iter_report(1) if r["status"] == "failed"]
    assert failed[0]["error_code"] == "ErrorInvalidRecipients"


def test_throttled_items_wait_and_are_sent_once(make_campaign) -> None:
    throttled = Counter()

    def rule(mailbox: str, item: dict):
        throttled["n"] += 1
        if throttled["n"] in (2, 3):
            return (
                429,
                {"Retry-After": "7"},
                {"error": {"code": "ApplicationThrottled", "message": "x"}},
                False,
            )
        return None

    graph = FakeGraph(rule)
    _store, counts = _run(make_campaign(), graph)
    assert counts[Status.SENT] == 5
    _exactly_once(graph, 5)


def test_denied_mailbox_leaves_the_pool(make_campaign) -> None:
    def rule(mailbox: str, item: dict):
        if mailbox == "bad@contoso.example":
            return (403, {}, {"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}}, False)
        return None

    rows = [
        {"email": f"p{i}@fabrikam.example", "name": "n", "first_name": "f", "city": "c"} for i in range(30)
    ]
    graph = FakeGraph(rule)
    _store, counts = _run(
        make_campaign(rows, mailboxes=("bad@contoso.example", "good@contoso.example")), graph
    )
    assert counts[Status.SENT] == 30
    assert {m for m, _a, _t in graph.delivered} == {"good@contoso.example"}


def test_all_mailboxes_denied_stops_with_hint(make_campaign) -> None:
    graph = FakeGraph(
        lambda m, i: (404, {}, {"error": {"code": "MailboxNotEnabledForRESTAPI", "message": "x"}}, False)
    )
    with pytest.raises(SendError, match="MailboxNotEnabledForRESTAPI"):
        _run(make_campaign(), graph)


def test_refused_token_is_refreshed(make_campaign) -> None:
    seen = Counter()

    def rule(mailbox: str, item: dict):
        seen["n"] += 1
        if seen["n"] == 1:
            return (401, {}, {"error": {"code": "InvalidAuthenticationToken", "message": "expired"}}, False)
        return None

    graph, tokens = FakeGraph(rule), Tokens()
    _store, counts = _run(make_campaign(), graph, tokens=tokens)
    assert counts[Status.SENT] == 5
    assert tokens.issued == 2 and graph.tokens_seen[-1] == "Bearer token-2"


def test_unknowns_without_sent_items_wait_for_the_user(make_campaign) -> None:
    graph = FakeGraph(lambda m, i: (504, {}, None, True) if "person1@" in json.dumps(i) else None)
    _store, counts = _run(make_campaign(save_to_sent_items=False), graph, save_to_sent_items=False)
    assert counts[Status.UNKNOWN] == 1 and counts[Status.SENT] == 4
    assert not any(r["method"] == "GET" for b in graph.batches for r in b)


def test_daily_recipient_cap_pauses_the_mailbox_until_the_window_allows_more(make_campaign) -> None:
    """The cap counts from the database: a campaign of 25 with a cap of 10 takes three days."""
    rows = [
        {"email": f"p{i}@fabrikam.example", "name": "n", "first_name": "f", "city": "c"} for i in range(25)
    ]
    path = make_campaign(rows, limits="messages_per_minute = 'unlimited'\ndaily_recipients = 10")
    campaign = load_campaign(path)
    clock = ManualClock()
    store = Store(campaign.database_url, clock=clock)
    import_recipients(campaign, store)
    sent_at: list[float] = []

    class TimedGraph(FakeGraph):
        async def request(self, method: str, url: str, **kwargs) -> Response:
            answer = await super().request(method, url, **kwargs)
            sent_at.extend([clock.time()] * (len(self.delivered) - len(sent_at)))
            return answer

    engine = build_engine(campaign, store, transport=TimedGraph(), tokens=Tokens(), rng=random.Random(1))
    summary = asyncio.run(engine.run())
    assert summary.counts[Status.SENT] == 25
    days = [round((t - sent_at[0]) / 86_400, 2) for t in sent_at]
    assert sorted(Counter(int(d) for d in days).values()) == [5, 10, 10]
    # never more than 10 recipients in any rolling 24 hours
    assert all(sum(1 for u in sent_at if t <= u < t + 86_400) <= 10 for t in sent_at)


def test_no_resend_before_a_live_sender_would_have_given_up(make_campaign) -> None:
    """A lost answer is not called missing before the request timeout, whatever the grace setting."""
    attempts: list[float] = []
    clock = ManualClock()

    def rule(mailbox: str, item: dict):
        if "person1@" in json.dumps(item):
            attempts.append(clock.time())
            return (504, {}, None, False) if len(attempts) == 1 else None
        return None

    campaign = load_campaign(make_campaign())
    store = Store(campaign.database_url, clock=clock)
    import_recipients(campaign, store)
    settings = SendSettings(
        **{
            **send_settings(campaign).__dict__,
            "reconcile_after": 1,
            "reconcile_grace": 1,
            "request_timeout": 30,
        }
    )
    engine = build_engine(campaign, store, transport=FakeGraph(rule), tokens=Tokens(), settings=settings)
    assert asyncio.run(engine.run()).counts[Status.SENT] == 5
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 30


def test_unknowns_of_a_mailbox_that_left_the_pool_do_not_hold_the_run(make_campaign) -> None:
    """A mailbox that is taken out leaves its unknown outcomes for a later resume; the rest finishes."""
    seen = Counter()

    def rule(mailbox: str, item: dict):
        if mailbox != "bad@contoso.example":
            return None
        seen["bad"] += 1
        if seen["bad"] == 1:
            return (504, {}, None, True)
        return (403, {}, {"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}}, False)

    rows = [
        {"email": f"p{i}@fabrikam.example", "name": "n", "first_name": "f", "city": "c"} for i in range(30)
    ]
    path = make_campaign(rows, mailboxes=("bad@contoso.example", "good@contoso.example"))
    campaign = load_campaign(path)
    store = Store(campaign.database_url, clock=ManualClock())
    import_recipients(campaign, store)
    engine = build_engine(campaign, store, transport=FakeGraph(rule), tokens=Tokens(), rng=random.Random(1))

    async def bounded() -> dict:
        return (await asyncio.wait_for(engine.run(), timeout=20)).counts

    counts = asyncio.run(bounded())
    assert counts[Status.UNKNOWN] == 1
    assert counts[Status.SENT] == 29
    assert engine.stopped == {"bad@contoso.example": "ErrorAccessDenied: Access is denied."}

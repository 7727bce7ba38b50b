from __future__ import annotations

import json
import random

import pytest

from mailmerge.send.graph import (
    TAG_PROPERTY_ID,
    ItemAnswer,
    OutgoingMessage,
    batch_body,
    mailbox_path,
    parse_batch,
    send_mail_item,
    sent_items_lookup_item,
)
from mailmerge.send.policy import RetryPolicy, Verdict, classify, classify_transport_error, parse_retry_after
from mailmerge.send.throttle import RateWindow
from mailmerge.send.transport import TransportError

NOW = 1_800_000_000.0


def _answer(status: int, code: str | None = None, retry_after: str | None = None) -> ItemAnswer:
    headers = {"Retry-After": retry_after} if retry_after else {}
    body = {"error": {"code": code, "message": f"{code} happened"}} if code else None
    return ItemAnswer(status, headers, body)


@pytest.mark.parametrize(
    ("status", "code", "verdict"),
    [
        (202, None, Verdict.SENT),
        (400, "ErrorInvalidRecipients", Verdict.FAILED),
        (413, "RequestEntityTooLarge", Verdict.FAILED),
        (403, "ErrorAccessDenied", Verdict.MAILBOX_STOPPED),
        (403, "ErrorSendAsDenied", Verdict.MAILBOX_STOPPED),
        (404, "MailboxNotEnabledForRESTAPI", Verdict.MAILBOX_STOPPED),
        (403, "ErrorQuotaExceeded", Verdict.MAILBOX_PAUSED),
        (401, "InvalidAuthenticationToken", Verdict.REAUTH),
        (429, "ApplicationThrottled", Verdict.RETRY),
        (424, None, Verdict.NOT_SENT),
        (500, None, Verdict.UNKNOWN),
        (503, "ServiceUnavailable", Verdict.UNKNOWN),
        (504, "GatewayTimeout", Verdict.UNKNOWN),
    ],
)
def test_classification_follows_the_contract_table(status: int, code: str | None, verdict: Verdict) -> None:
    assert classify(_answer(status, code), NOW).verdict is verdict


def test_transport_errors_unknown_unless_never_sent() -> None:
    assert (
        classify_transport_error(TransportError("timeout", "x", maybe_delivered=True)).verdict
        is Verdict.UNKNOWN
    )
    assert (
        classify_transport_error(TransportError("connect", "x", maybe_delivered=False)).verdict
        is Verdict.RETRY
    )


def test_retry_after_forms() -> None:
    assert parse_retry_after("7", NOW) == 7
    assert parse_retry_after("2.5", NOW) == 2.5
    from email.utils import formatdate

    assert parse_retry_after(formatdate(NOW + 30, usegmt=True), NOW) == pytest.approx(30, abs=1)
    assert parse_retry_after("soon", NOW) is None
    assert classify(_answer(429, "TooManyRequests", "3"), NOW).retry_after == 3


def test_backoff_grows_is_jittered_and_yields_to_retry_after() -> None:
    policy = RetryPolicy(max_attempts=5, initial=1, maximum=60, rng=random.Random(4))
    delays = [policy.delay(attempt, None) for attempt in range(1, 8)]
    assert all(0 < d <= 60 for d in delays)
    assert delays[4] > delays[0]
    assert policy.delay(3, 12.5) == 12.5
    assert policy.exhausted(5) and not policy.exhausted(4)
    again = RetryPolicy(max_attempts=5, initial=1, maximum=60, rng=random.Random(4))
    assert [again.delay(a, None) for a in range(1, 8)] == delays


def test_rate_window_is_rolling_not_a_burst_bucket() -> None:
    window = RateWindow(30)
    assert window.available(NOW, 50) == 30
    window.take(NOW, 30)
    assert window.available(NOW + 59, 1) == 0
    assert window.next_free_at(NOW + 1) == pytest.approx(NOW + 60, abs=0.1)
    assert window.available(NOW + 60.1, 50) == 30
    assert RateWindow(None).available(NOW, 50) == 50


def test_batch_chains_items_and_tags_every_message() -> None:
    message = OutgoingMessage("a@x.example", "Ä", "Hi", "<p>x</p>", "x", "normal", "tag-1")
    items = [
        send_mail_item(f"i{n}", mailbox_path("news@contoso.example"), message, save_to_sent_items=True)
        for n in range(3)
    ]
    document = json.loads(batch_body(items, sequential=True))
    requests = document["requests"]
    assert [r.get("dependsOn") for r in requests] == [None, ["i0"], ["i1"]]
    first = requests[0]
    assert first["url"] == "/users/news@contoso.example/sendMail"
    assert first["headers"] == {"Content-Type": "application/json"}
    assert first["body"]["message"]["singleValueExtendedProperties"] == [
        {"id": TAG_PROPERTY_ID, "value": "tag-1"}
    ]
    assert first["body"]["message"]["body"]["contentType"] == "html"


def test_lookup_is_url_encoded_filter() -> None:
    item = sent_items_lookup_item("r0", mailbox_path("a@x.example"), "abc")
    assert item.method == "GET" and " " not in item.url and "mailFolders('sentitems')" in item.url


def test_parse_batch_any_order_and_missing_items() -> None:
    payload = json.dumps(
        {
            "responses": [
                {"id": "2", "status": 429, "headers": {"Retry-After": "1"}},
                {"id": "1", "status": 202},
            ]
        }
    ).encode()
    answers = parse_batch(payload, ["1", "2"])
    assert answers["1"].status == 202 and answers["2"].header("retry-after") == "1"
    with pytest.raises(ValueError, match="lacks"):
        parse_batch(payload, ["1", "2", "3"])

"""Sent Items and Inbox: $filter, $select, $expand, paging, the Sent Items delay and NDRs."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable

import pytest
from sandbox_support import EXT_ID, SENDER, Api, message

from mailmerge.sandbox import Profile, Sandbox, ScaledClock

SENT = f"/users/{SENDER}/mailFolders('sentitems')/messages"


def by_tag(tag: str, prop_id: str = EXT_ID) -> str:
    return f"singleValueExtendedProperties/Any(ep: ep/id eq '{prop_id}' and ep/value eq '{tag}')"


@pytest.fixture
def three(sb: Sandbox, api: Api) -> list[str]:
    for i in range(3):
        assert api.send(message(subject=f"m{i}", tag=f"tag-{i}")).status_code == 202
    return [r.internet_message_id for r in sb.delivered()]


def test_filter_by_extended_property(api: Api, three: list[str]) -> None:
    found = api.sent_items(**{"$filter": by_tag("tag-1")})
    assert [m["subject"] for m in found] == ["m1"]
    # the type and GUID are case-insensitive, the Name is not
    assert (
        len(
            api.sent_items(
                **{"$filter": by_tag("tag-1", EXT_ID.upper().replace("NAME MAILMERGEID", "Name MailMergeId"))}
            )
        )
        == 1
    )
    assert api.sent_items(**{"$filter": by_tag("tag-1", EXT_ID.replace("MailMergeId", "mailmergeid"))}) == []
    assert api.sent_items(**{"$filter": by_tag("tag-9")}) == []


def test_filter_in_other_spellings(api: Api, three: list[str]) -> None:
    lower = f"singleValueExtendedProperties/any(x:x/value eq 'tag-2' and x/id eq '{EXT_ID}')"
    assert [m["subject"] for m in api.sent_items(**{"$filter": lower})] == ["m2"]
    # a query URL-encoded by hand, as some clients build it
    query = "$filter=" + urllib.parse.quote(by_tag("tag-0"), safe="")
    response = api.get(f"/users/{SENDER}/mailFolders/sentitems/messages?{query}")
    assert [m["subject"] for m in response.json()["value"]] == ["m0"]


def test_filter_by_internet_message_id_and_dates(api: Api, three: list[str]) -> None:
    found = api.sent_items(**{"$filter": f"internetMessageId eq '{three[1]}'"})
    assert [m["internetMessageId"] for m in found] == [three[1]]
    past = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    assert len(api.sent_items(**{"$filter": f"sentDateTime ge {past}"})) == 3
    assert api.sent_items(**{"$filter": f"sentDateTime ge {future}"}) == []
    combined = f"sentDateTime ge {past} and {by_tag('tag-2')}"
    assert [m["subject"] for m in api.sent_items(**{"$filter": combined})] == ["m2"]
    assert len(api.sent_items(**{"$filter": f"receivedDateTime ge {past} and not (subject eq 'm0')"})) == 2


def test_bad_filter_is_400(api: Api, three: list[str]) -> None:
    for bad in ("subject eqq 'x'", "colour eq 'x'", "singleValueExtendedProperties/any(ep: ep/id eq 'x')"):
        response = api.get(SENT, params={"$filter": bad})
        assert response.status_code == 400, bad


def test_select_and_expand(api: Api, three: list[str]) -> None:
    [item] = api.sent_items(**{"$filter": by_tag("tag-0"), "$select": "subject,internetMessageId"})
    assert set(item) == {"@odata.etag", "id", "subject", "internetMessageId"}
    [item] = api.sent_items(
        **{"$filter": by_tag("tag-0"), "$expand": f"singleValueExtendedProperties($filter=id eq '{EXT_ID}')"}
    )
    assert item["singleValueExtendedProperties"] == [{"id": EXT_ID, "value": "tag-0"}]
    assert (
        item["isDraft"] is False
        and item["sentDateTime"]
        and item["from"]["emailAddress"]["address"] == SENDER
    )
    assert "singleValueExtendedProperties" not in api.sent_items(**{"$filter": by_tag("tag-0")})[0]
    assert api.get(SENT, params={"$select": "nonsense"}).status_code == 400


def test_paging_with_next_link(sb: Sandbox, api: Api) -> None:
    for i in range(7):
        api.send(message(subject=f"p{i}", tag="same"))
    seen: list[str] = []
    response = api.get(SENT, params={"$top": "3", "$filter": by_tag("same"), "$select": "subject"})
    pages = 0
    while True:
        body = response.json()
        seen += [m["subject"] for m in body["value"]]
        pages += 1
        if "@odata.nextLink" not in body:
            break
        assert body["@odata.nextLink"].startswith(sb.graph_base_url)
        response = api.http.get(body["@odata.nextLink"], headers=api.headers(None))
    assert pages == 3 and sorted(seen) == [f"p{i}" for i in range(7)]
    assert seen[0] == "p6"  # newest first


def test_get_one_message(api: Api, three: list[str]) -> None:
    [item] = api.sent_items(**{"$filter": by_tag("tag-1")})
    one = api.get(f"{SENT[: -len('/messages')]}/messages/{urllib.parse.quote(item['id'], safe='')}")
    assert one.status_code == 200 and one.json()["subject"] == "m1"
    assert api.get(f"/users/{SENDER}/messages/AAMkAnotthere=").status_code == 404


def test_sent_copies_appear_after_the_delay(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    clock = ScaledClock(factor=1)
    sb = make_sandbox(Profile(sent_items_delay_seconds=30), clock=clock)
    api = make_api(sb)
    assert api.send(message(tag="late")).status_code == 202
    assert len(sb.delivered()) == 1
    assert api.sent_items(**{"$filter": by_tag("late")}) == []
    clock.advance(31)
    assert len(api.sent_items(**{"$filter": by_tag("late")})) == 1


def test_undeliverable_recipients_bounce_into_the_inbox(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    clock = ScaledClock(factor=1)
    sb = make_sandbox(Profile(ndr_delay_seconds=5), clock=clock)
    api = make_api(sb)
    sb.add_undeliverable("bounce@fabrikam.example", hard=True)
    sb.add_undeliverable("full@fabrikam.example", hard=False)
    assert api.send(message(to="bounce@fabrikam.example", subject="Spring news", tag="t1")).status_code == 202
    assert api.send(message(to="full@fabrikam.example", subject="Soft", tag="t2")).status_code == 202
    hard, _soft = sb.delivered()
    assert hard.failed_recipients == {"bounce@fabrikam.example": True}
    inbox = f"/users/{SENDER}/mailFolders('inbox')/messages"
    assert api.get(inbox).json()["value"] == []
    clock.advance(6)
    params = {
        "$top": "1",
        "$select": "subject,body,from,internetMessageHeaders",
        "$expand": f"singleValueExtendedProperties($filter=id eq '{EXT_ID}')",
    }
    first = api.get(inbox, params=params).json()
    assert "@odata.nextLink" in first
    second = api.http.get(first["@odata.nextLink"], headers=api.headers(None)).json()
    ndrs = {m["subject"]: m for m in first["value"] + second["value"]}
    ndr = ndrs["Undeliverable: Spring news"]
    assert ndr["from"]["emailAddress"]["name"] == "Microsoft Outlook"
    assert "bounce@fabrikam.example" in ndr["body"]["content"] and "5.1.1" in ndr["body"]["content"]
    assert hard.internet_message_id in ndr["body"]["content"]
    assert {"name": "In-Reply-To", "value": hard.internet_message_id} in ndr["internetMessageHeaders"]
    assert "singleValueExtendedProperties" not in ndr
    assert "4.4.7" in ndrs["Undeliverable: Soft"]["body"]["content"]
    # the NDR is not a sent message: lookups by tag in Sent Items still find exactly the original
    assert len(api.sent_items(**{"$filter": by_tag("t1")})) == 1

"""JSON batching: outer validation, dependsOn, 424, shuffled answers, per-item throttling."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import requests
from sandbox_support import SENDER, Api, message, send_item

from mailmerge.sandbox import Every, Faults, Latency, Limits, Profile, Sandbox


def statuses(response: requests.Response) -> dict[str, int]:
    assert response.status_code == 200, response.text
    return {r["id"]: r["status"] for r in response.json()["responses"]}


@pytest.mark.parametrize(
    "items",
    [
        [],
        [send_item(str(i)) for i in range(21)],
        [send_item("1"), send_item("1")],
        [send_item("1", url="https://graph.microsoft.com/v1.0/users/x/sendMail")],
        [send_item("1", headers={})],
        [send_item("1", dependsOn=["9"])],
        [send_item("1", dependsOn=["2"]), send_item("2", dependsOn=["1"])],
        [{"id": "1", "method": "FETCH", "url": "/me"}],
        [{"id": 1, "method": "GET", "url": "/me/messages"}],
    ],
    ids=[
        "empty",
        "21-items",
        "duplicate-ids",
        "absolute-url",
        "body-without-content-type",
        "unknown-dependency",
        "cycle",
        "bad-method",
        "numeric-id",
    ],
)
def test_malformed_batches_are_an_outer_400(sb: Sandbox, api: Api, items: list[dict[str, Any]]) -> None:
    response = api.batch(items)
    assert response.status_code == 400 and response.json()["error"]["code"] == "BadRequest"
    assert sb.delivered() == []


def test_content_type_message_is_graphs(api: Api) -> None:
    response = api.batch([send_item("7", headers={})])
    assert (
        response.json()["error"]["message"]
        == "Write request id : 7 does not contain Content-Type header or body."
    )


def test_items_answer_in_shuffled_order_with_their_own_status(sb: Sandbox, api: Api) -> None:
    sb.add_bad_recipient("nobody@contoso.example")
    items = [
        send_item("a"),
        send_item("b", message(to="nobody@contoso.example")),
        send_item("c"),
        {"id": "d", "method": "GET", "url": f"/users/{SENDER}/mailFolders('sentitems')/messages?$top=1"},
    ]
    response = api.batch(items)
    body = response.json()["responses"]
    by_id = {r["id"]: r for r in body}
    assert by_id["a"]["status"] == 202 and "body" not in by_id["a"]
    assert by_id["b"]["status"] == 400 and by_id["b"]["body"]["error"]["code"] == "ErrorInvalidRecipients"
    assert by_id["d"]["status"] == 200 and "value" in by_id["d"]["body"]
    orders = {tuple(r["id"] for r in api.batch(items).json()["responses"]) for _ in range(6)}
    assert len(orders) > 1  # not the request order every time
    assert [log["item"] for log in sb.request_log() if log["batch"]][:4] == ["a", "b", "c", "d"]


def test_shuffle_is_seeded(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    def orders(seed: int) -> list[tuple[str, ...]]:
        api = make_api(make_sandbox(Profile(seed=seed, limits=Limits.unlimited())))
        items = [send_item(str(i)) for i in range(8)]
        return [tuple(r["id"] for r in api.batch(items).json()["responses"]) for _ in range(3)]

    assert orders(5) == orders(5)
    assert orders(5) != orders(6)


def test_more_than_four_independent_items_for_one_mailbox_get_429(sb: Sandbox, api: Api) -> None:
    response = api.batch([send_item(str(i), message(subject=f"s{i}")) for i in range(6)])
    result = statuses(response)
    assert sorted(result.values()) == [202, 202, 202, 202, 429, 429]
    throttled = [r for r in response.json()["responses"] if r["status"] == 429]
    for item in throttled:
        assert item["body"]["error"]["code"] == "ApplicationThrottled"
        assert "MailboxConcurrency" in item["body"]["error"]["message"]
        assert int(item["headers"]["Retry-After"]) >= 1
    assert len(sb.delivered()) == 4


def test_depends_on_chains_run_one_after_another(sb: Sandbox, api: Api) -> None:
    items = [send_item("0")] + [send_item(str(i), dependsOn=[str(i - 1)]) for i in range(1, 6)]
    assert set(statuses(api.batch(items)).values()) == {202}
    assert len(sb.delivered()) == 6


def test_failed_dependency_is_424(sb: Sandbox, api: Api) -> None:
    sb.add_bad_recipient("nobody@contoso.example")
    items = [
        send_item("1", message(to="nobody@contoso.example")),
        send_item("2", dependsOn=["1"]),
        send_item("3", dependsOn=["2"]),
    ]
    response = api.batch(items)
    assert statuses(response) == {"1": 400, "2": 424, "3": 424}
    failed = next(r for r in response.json()["responses"] if r["id"] == "2")
    assert failed["body"]["error"]["code"] == "FailedDependency"
    assert sb.delivered() == []


def test_item_level_throttle_inside_an_outer_200(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(
        Profile(
            faults=Faults(seed=1, throttle=Every(2)),
            retry_after_style="fractional",
            limits=Limits.unlimited(),
        )
    )
    api = make_api(sb)
    response = api.batch([send_item(str(i)) for i in range(4)])
    result = statuses(response)
    assert sorted(result.values()) == [202, 202, 429, 429]
    for item in response.json()["responses"]:
        if item["status"] == 429:
            assert float(item["headers"]["Retry-After"]) == pytest.approx(2.0)
            assert item["body"]["error"]["code"] == "TooManyRequests"


def test_item_urls_without_leading_slash_and_mailbox_errors(sb: Sandbox, api: Api) -> None:
    items = [
        send_item("1", url=f"users/{SENDER}/sendMail"),
        send_item("2", url="/users/ghost@x.example/sendMail"),
    ]
    assert statuses(api.batch(items)) == {"1": 202, "2": 404}


def test_concurrency_limit_spans_requests(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    # each request takes 0.5 s: six at once for one mailbox leave two over the limit of four
    sb = make_sandbox(Profile(latency=Latency.fixed(0.5), limits=Limits(messages_per_minute=None)))
    api = make_api(sb)
    token = api.default_token
    results: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        with requests.Session() as http:
            http.trust_env, http.verify = False, str(sb.ca_file)
            response = http.post(
                f"{sb.graph_base_url}/users/{SENDER}/sendMail",
                json={"message": message()},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
        with lock:
            results.append(response.status_code)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [202, 202, 202, 202, 429, 429]

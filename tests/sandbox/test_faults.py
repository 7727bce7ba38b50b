"""Seeded fault injection: reproducible, and 'accepted but error' really delivers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from sandbox_support import EXT_ID, Api, message, send_item

from mailmerge.sandbox import Every, Faults, Limits, Profile, Sandbox

UNLIMITED = Limits.unlimited()


def run(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api], faults: Faults, n: int = 30
) -> list[int]:
    api = make_api(make_sandbox(Profile(faults=faults, limits=UNLIMITED)))
    return [api.send(message(subject=str(i))).status_code for i in range(n)]


def test_same_seed_same_faults(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    faults = Faults(seed=7, server_error=0.3, throttle=0.1)
    first = run(make_sandbox, make_api, faults)
    assert first == run(make_sandbox, make_api, faults)
    assert {500, 502, 503, 504} & set(first) and 429 in first and 202 in first
    assert first != run(make_sandbox, make_api, Faults(seed=8, server_error=0.3, throttle=0.1))


def test_every_nth(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    result = run(make_sandbox, make_api, Faults(server_error=Every(3), server_error_statuses=(503,)), n=9)
    assert result == [202, 202, 503] * 3


def test_server_errors_do_not_deliver(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(Profile(faults=Faults(server_error=Every(1), server_error_retry_after=1.0)))
    response = make_api(sb).send()
    assert response.status_code in (500, 502, 503, 504) and response.headers["Retry-After"] == "2"
    assert sb.delivered() == []
    assert sb.request_log()[-1]["fault"] == "server_error"


def test_reset_drops_the_connection_without_delivering(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(Profile(faults=Faults(reset=Every(1))))
    with pytest.raises(requests.ConnectionError):
        make_api(sb).send()
    assert sb.delivered() == []


def test_hang_outlasts_the_client_timeout(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(Profile(faults=Faults(hang=Every(1), hang_seconds=3)))
    with pytest.raises(requests.Timeout):
        make_api(sb).send(timeout=0.3)
    assert sb.delivered() == []


@pytest.mark.parametrize(("kind", "status"), [("504", 504), ("429", 429), ("reset", None)])
def test_accepted_but_error_delivers(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api], kind: str, status: int | None
) -> None:
    sb = make_sandbox(Profile(faults=Faults(accepted_but_error=Every(1), accepted_but_error_kinds=(kind,))))
    api = make_api(sb)
    if status is None:
        with pytest.raises(requests.ConnectionError):
            api.send(message(tag="sent-anyway"))
    else:
        response = api.send(message(tag="sent-anyway"))
        assert response.status_code == status
        if status == 429:
            assert response.headers["Retry-After"]
    assert [r.extended_properties[EXT_ID] for r in sb.delivered()] == ["sent-anyway"]
    sb.set_faults(Faults())
    lookup = f"singleValueExtendedProperties/any(ep: ep/id eq '{EXT_ID}' and ep/value eq 'sent-anyway')"
    assert len(api.sent_items(**{"$filter": lookup})) == 1


def test_batch_item_faults_inside_an_outer_200(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(
        Profile(
            limits=UNLIMITED, faults=Faults(accepted_but_error=Every(2), accepted_but_error_kinds=("reset",))
        )
    )
    response = make_api(sb).batch([send_item(str(i)) for i in range(4)])
    assert response.status_code == 200
    assert sorted(r["status"] for r in response.json()["responses"]) == [202, 202, 504, 504]
    assert len(sb.delivered()) == 4  # the 504s were delivered too


def test_whole_batch_faults(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    sb = make_sandbox(Profile(limits=UNLIMITED, faults=Faults(batch_server_error=Every(1))))
    api = make_api(sb)
    assert api.batch([send_item(str(i)) for i in range(3)]).status_code in (500, 502, 503, 504)
    assert sb.delivered() == []
    sb.set_faults(Faults(seed=4, batch_accepted_but_error=Every(1)))
    outcomes = []
    for _ in range(6):
        try:
            outcomes.append(api.batch([send_item(str(i)) for i in range(5)], timeout=0.5).status_code)
        except (requests.ConnectionError, requests.Timeout):
            outcomes.append(None)
    assert 200 not in outcomes
    assert 6 <= len(sb.delivered()) <= 30  # some or all items of each batch went out


def test_set_faults_takes_effect_at_once(sb: Sandbox, api: Api) -> None:
    assert api.send().status_code == 202
    sb.set_faults(Faults(throttle=Every(1)))
    assert api.send().status_code == 429
    sb.set_faults(Faults())
    assert api.send().status_code == 202


def test_latency_and_slow(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    import time

    sb = make_sandbox(Profile(faults=Faults(slow=Every(2), slow_seconds=0.4), latency=0.05))
    api = make_api(sb)
    durations = []
    for _ in range(2):
        started = time.monotonic()
        assert api.send().status_code == 202
        durations.append(time.monotonic() - started)
    assert durations[0] >= 0.05 and durations[1] >= 0.45

"""Emulated limits on the injected clock: messages per minute, requests per 10 minutes, daily recipients,
and the three Retry-After styles."""

from __future__ import annotations

import email.utils
from collections.abc import Callable

import pytest
from sandbox_support import Api, message

from mailmerge.sandbox import Limits, Profile, Sandbox, ScaledClock
from mailmerge.sandbox.throttle import Throttle


def throttled(
    make_sandbox: Callable[..., Sandbox],
    make_api: Callable[..., Api],
    style: str = "integer",
    **limits: int | None,
) -> tuple[Sandbox, Api, ScaledClock]:
    clock = ScaledClock(factor=1)
    base = {"messages_per_minute": None, "requests_per_10_minutes": None, "recipients_per_24h": None}
    sb = make_sandbox(Profile(limits=Limits(**{**base, **limits}), retry_after_style=style), clock=clock)
    return sb, make_api(sb), clock


def test_messages_per_minute(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    sb, api, clock = throttled(make_sandbox, make_api, messages_per_minute=3)
    for _ in range(3):
        assert api.send().status_code == 202
        clock.advance(10)
    response = api.send()
    assert response.status_code == 429 and response.json()["error"]["code"] == "TooManyRequests"
    # the oldest of the three was sent 30 s ago: a slot frees in 30 s
    assert 29 <= int(response.headers["Retry-After"]) <= 31
    clock.advance(31)
    assert api.send().status_code == 202
    assert len(sb.delivered()) == 4


@pytest.mark.parametrize("style", ["integer", "fractional", "http-date"])
def test_retry_after_styles(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api], style: str
) -> None:
    _sb, api, clock = throttled(make_sandbox, make_api, style=style, messages_per_minute=1)
    assert api.send().status_code == 202
    clock.advance(0.5)
    value = api.send().headers["Retry-After"]
    if style == "integer":
        assert value == "60"
    elif style == "fractional":
        assert float(value) == pytest.approx(59.5, abs=0.1) and "." in value
    else:
        when = email.utils.parsedate_to_datetime(value).timestamp()
        assert 59 <= when - clock.time() <= 61


def test_requests_per_10_minutes(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    _, api, clock = throttled(make_sandbox, make_api, requests_per_10_minutes=5)
    for _ in range(5):
        assert api.get("/users/news@contoso.example/messages").status_code == 200
    response = api.send()
    assert response.status_code == 429 and response.json()["error"]["code"] == "ApplicationThrottled"
    clock.advance(601)
    assert api.send().status_code == 202


def test_daily_recipient_limit_blocks_the_mailbox(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb, api, clock = throttled(make_sandbox, make_api, recipients_per_24h=5)
    three = message(to=["a@x.example", "b@x.example", "c@x.example"])
    assert api.send(three).status_code == 202
    crossing = api.send(three)
    assert crossing.status_code == 403 and crossing.json()["error"]["code"] == "ErrorQuotaExceeded"
    # blocked now, even for a message that would fit
    assert api.send(message(to="a@x.example")).status_code == 403
    clock.advance(23 * 3600)
    token = api.token()  # the first one has expired meanwhile
    assert api.send(message(to="a@x.example"), token=token).status_code == 403
    clock.advance(3601)
    assert api.send(message(to="a@x.example"), token=api.token()).status_code == 202
    assert len(sb.delivered()) == 2


def test_limits_change_at_runtime(sb: Sandbox, api: Api) -> None:
    sb.set_limits(Limits(messages_per_minute=1))
    assert api.send().status_code == 202
    assert api.send().status_code == 429
    sb.set_limits(Limits.unlimited())
    assert api.send().status_code == 202


def test_concurrency_slots_are_given_back() -> None:
    throttle = Throttle(Limits(concurrent_requests=2))
    key = ("app", "mailbox")
    assert throttle.enter(key) is None and throttle.enter(key) is None
    assert throttle.enter(key) is not None
    throttle.leave(key)
    assert throttle.enter(key) is None
    assert throttle.enter(("app", "other")) is None  # per mailbox

"""The outbox folder: readable files, a request log without secrets, and state that survives a restart."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from sandbox_support import CLIENT_ID, EXT_ID, SECRET, SENDER, TENANT, Api, message, send_item

from mailmerge.sandbox import Limits, Profile, Sandbox


def lookup(tag: str) -> dict[str, str]:
    return {"$filter": f"singleValueExtendedProperties/any(ep: ep/id eq '{EXT_ID}' and ep/value eq '{tag}')"}


def test_messages_and_request_log_are_written(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api], tmp_path: Path
) -> None:
    sb = make_sandbox(outbox=tmp_path)
    api = make_api(sb)
    assert api.send(message(tag="one")).status_code == 202
    assert api.batch([send_item("x", message(tag="two"))]).status_code == 200
    files = sorted((tmp_path / SENDER).glob("*.json"))
    assert [f.name[:7] for f in files] == ["000001-", "000002-"]
    record = json.loads(files[0].read_text())
    assert record["mailbox"] == SENDER and record["extended_properties"] == {EXT_ID: "one"}
    assert files[0].read_text().startswith("{\n  ")  # pretty, for people
    lines = [json.loads(line) for line in (tmp_path / "requests.log").read_text().splitlines()]
    assert [entry["path"] for entry in lines] == [
        f"/{TENANT}/oauth2/v2.0/token",
        f"/v1.0/users/{SENDER}/sendMail",
        f"/users/{SENDER}/sendMail",
        "/v1.0/$batch",
    ]
    assert lines[2]["item"] == "x" and lines[2]["batch"] == lines[3]["request_id"]
    assert lines[0]["client_id"] == CLIENT_ID and lines[1]["mailbox"] == SENDER


def test_request_log_holds_no_secret_token_or_body(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api], tmp_path: Path
) -> None:
    sb = make_sandbox(outbox=tmp_path)
    api = make_api(sb)
    api.send(message(subject="very private subject"))
    api.token_response(secret="wrong-secret-value")
    text = (tmp_path / "requests.log").read_text() + json.dumps(sb.request_log())
    for secret in (SECRET, api.default_token, "wrong-secret-value", "very private subject", "Bearer"):
        assert secret not in text


def test_restart_keeps_sent_items_delivered_and_drafts(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api], tmp_path: Path
) -> None:
    first = make_sandbox(outbox=tmp_path)
    api = make_api(first)
    old_token = api.default_token
    for tag in ("a", "b"):
        assert api.send(message(tag=tag)).status_code == 202
    draft = api.post(
        f"/users/{SENDER}/messages", message(subject="unsent"), headers={"Prefer": 'IdType="ImmutableId"'}
    ).json()
    ca_before = first.ca_file.read_bytes()
    port = first.port
    first.stop()

    second = make_sandbox(outbox=tmp_path, port=port)
    api2 = make_api(second)
    assert second.ca_file.read_bytes() == ca_before  # clients keep trusting the restarted emulator
    assert [r.extended_properties[EXT_ID] for r in second.delivered()] == ["a", "b"]
    # tokens of the earlier process are unknown now
    stale = api2.send(token=old_token)
    assert (stale.status_code, stale.json()["error"]["code"]) == (401, "InvalidAuthenticationToken")
    assert len(api2.sent_items(**lookup("b"))) == 1
    kept = api2.get(f"/users/{SENDER}/messages/{urllib.parse.quote(draft['id'], safe='')}")
    assert kept.status_code == 200 and kept.json()["isDraft"] is True
    assert api2.send(message(tag="c")).status_code == 202
    assert [r.sequence for r in second.delivered()] == [1, 2, 3]
    assert len(list((tmp_path / SENDER).glob("*.json"))) == 3


def test_daily_recipient_budget_survives_a_restart(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api], tmp_path: Path
) -> None:
    profile = Profile(limits=Limits(recipients_per_24h=2, messages_per_minute=None))
    first = make_sandbox(profile, outbox=tmp_path)
    assert make_api(first).send(message(to=["a@x.example", "b@x.example"])).status_code == 202
    first.stop()
    second = make_sandbox(profile, outbox=tmp_path)
    assert make_api(second).send(message(to="c@x.example")).status_code == 403


def test_memory_only_without_outbox(sb: Sandbox, api: Api) -> None:
    api.send()
    assert sb.outbox_path is None and len(sb.delivered()) == 1
    assert sb.request_log()[-1]["status"] == 202

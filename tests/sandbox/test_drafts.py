"""Drafts, immutable ids, sending a draft, and upload sessions for large attachments."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
import requests
from sandbox_support import SENDER, Api, message

from mailmerge.sandbox import Limits, Profile, Sandbox, ScaledClock

MiB = 1024 * 1024
IMMUTABLE = {"Prefer": 'IdType="ImmutableId"'}


def create_draft(api: Api, immutable: bool = True, **extra: Any) -> dict[str, Any]:
    response = api.post(f"/users/{SENDER}/messages", message(**extra), headers=IMMUTABLE if immutable else {})
    assert response.status_code == 201, response.text
    return dict(response.json())


def message_path(item_id: str) -> str:
    return f"/users/{SENDER}/messages/{urllib.parse.quote(item_id, safe='')}"


def test_draft_created_then_sent_keeps_its_immutable_id(sb: Sandbox, api: Api) -> None:
    draft = create_draft(api, subject="Draft one")
    assert draft["isDraft"] is True and draft["internetMessageId"].startswith("<")
    assert api.get(message_path(draft["id"])).json()["isDraft"] is True
    assert sb.delivered() == []
    sent = api.post(message_path(draft["id"]) + "/send")
    assert sent.status_code == 202 and sent.content == b""
    after = api.get(message_path(draft["id"])).json()
    assert after["isDraft"] is False and after["internetMessageId"] == draft["internetMessageId"]
    [record] = sb.delivered()
    assert record.via == "draft-send" and record.internet_message_id == draft["internetMessageId"]
    assert record.sent_item_id == draft["id"]
    # sending twice is refused
    assert api.post(message_path(draft["id"]) + "/send").status_code == 400


def test_without_immutable_ids_the_id_changes_on_send(sb: Sandbox, api: Api) -> None:
    draft = create_draft(api, immutable=False)
    assert api.post(message_path(draft["id"]) + "/send").status_code == 202
    gone = api.get(message_path(draft["id"]))
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "ErrorItemNotFound")
    [copy] = api.sent_items()
    assert copy["id"] != draft["id"] and copy["internetMessageId"] == draft["internetMessageId"]


def test_draft_without_recipients_cannot_be_sent(api: Api) -> None:
    response = api.post(f"/users/{SENDER}/messages", {"subject": "nobody"}, headers=IMMUTABLE)
    sent = api.post(message_path(response.json()["id"]) + "/send")
    assert (sent.status_code, sent.json()["error"]["code"]) == (400, "ErrorInvalidRecipients")


def _session(api: Api, draft_id: str, size: int) -> requests.Response:
    item = {
        "AttachmentItem": {
            "attachmentType": "file",
            "name": "big.pdf",
            "size": size,
            "contentType": "application/pdf",
        }
    }
    return api.post(message_path(draft_id) + "/attachments/createUploadSession", item)


def _put(api: Api, url: str, data: bytes, start: int, total: int, **headers: str) -> requests.Response:
    end = start + len(data) - 1
    return api.http.put(
        url,
        data=data,
        headers={
            "Content-Range": f"bytes {start}-{end}/{total}",
            "Content-Type": "application/octet-stream",
            **headers,
        },
    )


def test_upload_session_attaches_a_large_file(sb: Sandbox, api: Api) -> None:
    draft = create_draft(api, subject="With attachment")
    small = _session(api, draft["id"], 2 * MiB)
    assert (small.status_code, small.json()["error"]["code"]) == (
        400,
        "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
    )
    size = 3 * MiB + 1000
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    session = _session(api, draft["id"], size)
    assert session.status_code == 201
    body = session.json()
    assert body["nextExpectedRanges"] == ["0-"] and body["expirationDateTime"]
    url = body["uploadUrl"]
    chunk = 5 * 320 * 1024  # a multiple of 320 KiB, as recommended
    # the Graph bearer token must not be sent to the upload URL
    with_token = _put(api, url, payload[:chunk], 0, size, Authorization=f"Bearer {api.default_token}")
    assert with_token.status_code == 401
    first = _put(api, url, payload[:chunk], 0, size)
    assert first.status_code == 200 and first.json()["nextExpectedRanges"] == [str(chunk)]
    # out of order
    assert _put(api, url, payload[chunk + 10 :], chunk + 10, size).status_code == 416
    assert api.http.get(url).json()["nextExpectedRanges"] == [str(chunk)]
    last = _put(api, url, payload[chunk:], chunk, size)
    assert last.status_code == 201 and last.content == b"" and "/attachments('" in last.headers["Location"]
    assert api.get(message_path(draft["id"])).json()["hasAttachments"] is True
    assert api.post(message_path(draft["id"]) + "/send").status_code == 202
    [record] = sb.delivered()
    [attachment] = record.message["attachments"]
    assert attachment["name"] == "big.pdf" and attachment["size"] == size
    import base64

    assert base64.b64decode(attachment["contentBytes"]) == payload


def test_upload_chunks_are_at_most_4_mb_and_sessions_can_be_cancelled(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(Profile(limits=Limits(max_request_bytes=None)))
    api = make_api(sb)
    draft = create_draft(api)
    size = 5 * MiB
    url = _session(api, draft["id"], size).json()["uploadUrl"]
    assert _put(api, url, b"\0" * (4 * MiB + 1), 0, size).status_code == 413
    assert api.http.delete(url).status_code == 204
    assert _put(api, url, b"\0" * MiB, 0, size).status_code == 404


def test_upload_bytes_are_throttled_per_5_minutes(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    clock = ScaledClock(factor=1)
    sb = make_sandbox(Profile(limits=Limits(upload_bytes_per_5_minutes=5 * MiB)), clock=clock)
    api = make_api(sb)
    draft = create_draft(api)
    url = _session(api, draft["id"], 4 * MiB).json()["uploadUrl"]
    assert _put(api, url, b"\0" * (3 * MiB), 0, 4 * MiB).status_code == 200
    other = _session(api, create_draft(api)["id"], 4 * MiB).json()["uploadUrl"]
    throttled = _put(api, other, b"\0" * (3 * MiB), 0, 4 * MiB)
    assert throttled.status_code == 429 and 290 <= int(throttled.headers["Retry-After"]) <= 300
    clock.advance(301)
    assert _put(api, other, b"\0" * (3 * MiB), 0, 4 * MiB).status_code == 200


@pytest.mark.parametrize("size", [0, 151 * MiB])
def test_upload_session_size_bounds(api: Api, size: int) -> None:
    assert _session(api, create_draft(api)["id"], size).status_code == 400

"""sendMail: the success shape, authentication, permissions, mailboxes and message validation."""

from __future__ import annotations

from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest
from sandbox_support import CLIENT_ID, EXT_ID, SECRET, SENDER, TENANT, Api, b64, message

from mailmerge.sandbox import Limits, Profile, Sandbox, ScaledClock


def error_code(response: Any) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_success_is_202_with_empty_body_and_a_delivered_record(sb: Sandbox, api: Api) -> None:
    msg = message(
        to=["a@fabrikam.example"],
        tag="tag-1",
        ccRecipients=[{"emailAddress": {"address": "c@x.example"}}],
        bccRecipients=[{"emailAddress": {"address": "b@x.example"}}],
        internetMessageHeaders=[{"name": "X-Campaign", "value": "spring"}],
    )
    response = api.post(
        f"/users/{SENDER}/sendMail", {"message": msg}, headers={"client-request-id": "abc-123"}
    )
    assert response.status_code == 202 and response.content == b""
    assert response.headers["request-id"] and response.headers["client-request-id"] == "abc-123"
    [record] = sb.delivered()
    assert record.mailbox == SENDER and record.via == "sendMail" and record.subject == "Hello"
    assert record.recipients == ["a@fabrikam.example", "c@x.example", "b@x.example"]
    assert record.extended_properties == {EXT_ID: "tag-1"} and record.headers == {"X-Campaign": "spring"}
    assert (
        record.internet_message_id.startswith("<")
        and record.message["internetMessageId"] == record.internet_message_id
    )
    assert record.accepted_at > 0 and record.app == CLIENT_ID


def test_errors_carry_the_graph_error_shape(api: Api) -> None:
    response = api.post(
        f"/users/{SENDER}/sendMail",
        {"message": {"subject": "no recipients"}},
        headers={"client-request-id": "cid-9"},
    )
    error = response.json()["error"]
    assert error["code"] == "ErrorInvalidRecipients" and error["message"]
    assert error["innerError"]["client-request-id"] == "cid-9"
    assert error["innerError"]["request-id"] and error["innerError"]["date"]
    assert response.headers["request-id"]


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic abc"])
def test_missing_or_invalid_token_is_401(api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = api.http.post(
        f"{api.sb.graph_base_url}/users/{SENDER}/sendMail", json={"message": message()}, headers=headers
    )
    assert error_code(response) == (401, "InvalidAuthenticationToken")


def test_expired_token_is_401(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    clock = ScaledClock(factor=1)
    sb = make_sandbox(Profile(token_lifetime_seconds=60), clock=clock)
    api = make_api(sb)
    token = api.token()
    assert api.send(token=token).status_code == 202
    clock.advance(61)
    assert error_code(api.send(token=token)) == (401, "InvalidAuthenticationToken")


def test_token_without_mail_send_is_403(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(register=False)
    sb.register_app(TENANT, CLIENT_ID, secret=SECRET, application_permissions=("Mail.Read",))
    sb.add_mailbox(SENDER)
    response = make_api(sb).send()
    assert error_code(response) == (403, "ErrorAccessDenied")
    assert response.json()["error"]["message"] == "Access is denied. Check credentials and try again."


def test_reading_needs_a_read_permission(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(register=False)
    sb.register_app(TENANT, CLIENT_ID, secret=SECRET, application_permissions=("Mail.Send",))
    sb.add_mailbox(SENDER)
    api = make_api(sb)
    assert api.send().status_code == 202
    assert error_code(api.get(f"/users/{SENDER}/mailFolders('sentitems')/messages")) == (
        403,
        "ErrorAccessDenied",
    )
    assert error_code(api.post(f"/users/{SENDER}/messages", {"subject": "d"})) == (403, "ErrorAccessDenied")


def test_mailbox_states(sb: Sandbox, api: Api) -> None:
    sb.add_mailbox("cannot@contoso.example", can_send=False)
    sb.add_mailbox("onprem@contoso.example", rest_enabled=False)
    sb.add_mailbox("denied@contoso.example", send_as_denied=True)
    assert error_code(api.send(mailbox="nobody@contoso.example")) == (404, "MailboxNotEnabledForRESTAPI")
    assert error_code(api.send(mailbox="onprem@contoso.example")) == (404, "MailboxNotEnabledForRESTAPI")
    assert error_code(api.send(mailbox="not-an-id")) == (400, "ErrorInvalidUser")
    assert error_code(api.send(mailbox="cannot@contoso.example")) == (403, "ErrorAccessDenied")
    assert error_code(api.send(mailbox="denied@contoso.example")) == (403, "ErrorSendAsDenied")
    assert sb.delivered() == []


def test_mailbox_by_object_id_and_case_insensitive_upn(sb: Sandbox, api: Api) -> None:
    from mailmerge.sandbox.directory import stable_id

    assert api.send(mailbox=SENDER.upper()).status_code == 202
    assert api.send(mailbox=stable_id("user", SENDER)).status_code == 202
    assert [r.mailbox for r in sb.delivered()] == [SENDER, SENDER]


@pytest.mark.parametrize(
    ("msg", "status", "code"),
    [
        (message(to="nobody@contoso.example"), 400, "ErrorInvalidRecipients"),
        (message(to="not an address"), 400, "ErrorInvalidRecipients"),
        (message(to="user@nodot"), 400, "ErrorInvalidRecipients"),
        ({"subject": "x", "toRecipients": []}, 400, "ErrorInvalidRecipients"),
        (
            message(internetMessageHeaders=[{"name": "Campaign", "value": "1"}]),
            400,
            "InvalidInternetMessageHeader",
        ),
        (message(internetMessageHeaders=[]), 400, "InvalidInternetMessageHeaderCollection"),
        (
            message(internetMessageHeaders=[{"name": f"x-h{i}", "value": "v"} for i in range(6)]),
            400,
            "InvalidInternetMessageHeaderCollection",
        ),
        (message(body={"contentType": "markdown", "content": "x"}), 400, "RequestBodyRead"),
        (message(importance="urgent"), 400, "RequestBodyRead"),
        (message(colour="blue"), 400, "RequestBodyRead"),
        (message(toRecipients={"emailAddress": {"address": "a@b.example"}}), 400, "RequestBodyRead"),
        (
            message(toRecipients=[{"emailAddress": {"address": "a@b.example", "alias": "x"}}]),
            400,
            "RequestBodyRead",
        ),
        (message(attachments=[{"name": "a.txt", "contentBytes": b64(b"hi")}]), 400, "RequestBodyRead"),
        (
            message(
                attachments=[
                    {
                        "@odata.type": "#microsoft.graph.fileAttachment",
                        "name": "a.txt",
                        "contentBytes": "not base64!",
                    }
                ]
            ),
            400,
            "RequestBodyRead",
        ),
        (
            message(attachments=[{"@odata.type": "#microsoft.graph.itemAttachment", "name": "a"}]),
            400,
            "ErrorInvalidAttachmentType",
        ),
        (message(**{"from": {"emailAddress": {"address": "ceo@contoso.example"}}}), 403, "ErrorSendAsDenied"),
        (
            message(singleValueExtendedProperties=[{"id": "String MailMergeId", "value": "1"}]),
            400,
            "ErrorInvalidExtendedProperty",
        ),
    ],
)
def test_message_validation(sb: Sandbox, api: Api, msg: dict[str, Any], status: int, code: str) -> None:
    sb.add_bad_recipient("nobody@contoso.example")
    assert error_code(api.send(msg)) == (status, code)
    assert sb.delivered() == []


def test_unknown_property_message_names_it(api: Api) -> None:
    response = api.send(message(colour="blue"))
    assert (
        "The property 'colour' does not exist on type 'microsoft.graph.message'"
        in response.json()["error"]["message"]
    )


def test_malformed_json_and_missing_message(api: Api) -> None:
    bad = api.post(
        f"/users/{SENDER}/sendMail", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert error_code(bad) == (400, "RequestBodyRead")
    empty = api.post(f"/users/{SENDER}/sendMail", data=b"", headers={"Content-Type": "application/json"})
    assert error_code(empty) == (400, "BadRequest")
    assert error_code(api.post(f"/users/{SENDER}/sendMail", {"saveToSentItems": True})) == (
        400,
        "RequestBodyRead",
    )
    assert error_code(api.post(f"/users/{SENDER}/sendMail", {"message": message(), "extra": 1})) == (
        400,
        "RequestBodyRead",
    )
    xml = api.post(f"/users/{SENDER}/sendMail", data=b"<x/>", headers={"Content-Type": "application/xml"})
    assert error_code(xml) == (415, "UnsupportedMediaType")


def test_names_and_enum_values_are_case_insensitive(sb: Sandbox, api: Api) -> None:
    msg = {
        "Subject": "Caps",
        "Body": {"ContentType": "HTML", "Content": "<b>x</b>"},
        "Importance": "High",
        "ToRecipients": [{"EmailAddress": {"Address": "a@b.example"}}],
    }
    assert (
        api.post(f"/users/{SENDER}/sendMail", {"Message": msg, "SaveToSentItems": False}).status_code == 202
    )
    [record] = sb.delivered()
    assert record.message["body"] == {"contentType": "html", "content": "<b>x</b>"}
    assert record.message["importance"] == "high" and record.recipients == ["a@b.example"]
    assert record.saved_to_sent_items is False


def test_too_many_recipients(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    sb = make_sandbox(Profile(limits=Limits(max_recipients_per_message=3)))
    api = make_api(sb)
    ok = message(
        to=["a@x.example", "b@x.example"], bccRecipients=[{"emailAddress": {"address": "c@x.example"}}]
    )
    assert api.send(ok).status_code == 202
    too_many = dict(ok, ccRecipients=[{"emailAddress": {"address": "d@x.example"}}])
    assert error_code(api.send(too_many)) == (400, "ErrorTooManyRecipients")


def test_request_body_limit_is_413(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(Profile(limits=Limits(max_request_bytes=2000)))
    api = make_api(sb)
    assert api.send(message(subject="x" * 500)).status_code == 202
    assert error_code(api.send(message(subject="x" * 3000))) == (413, "RequestEntityTooLarge")


def test_inline_attachments_must_be_under_3_mb(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(Profile(limits=Limits(max_request_bytes=None)))
    api = make_api(sb)

    def attach(size: int) -> dict[str, Any]:
        return message(
            attachments=[
                {
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    "name": "f.bin",
                    "contentType": "application/octet-stream",
                    "contentBytes": b64(b"\0" * size),
                }
            ]
        )

    assert api.send(attach(1024)).status_code == 202
    assert sb.delivered()[0].message["attachments"][0]["size"] == 1024
    assert error_code(api.send(attach(3 * 1024 * 1024))) == (413, "ErrorMessageSizeExceeded")


def test_save_to_sent_items(sb: Sandbox, api: Api) -> None:
    assert api.send(message(tag="kept")).status_code == 202
    assert api.send(message(tag="not-kept"), saveToSentItems=False).status_code == 202
    assert [
        m["singleValueExtendedProperties"][0]["value"]
        for m in api.sent_items(**{"$expand": f"singleValueExtendedProperties($filter=id eq '{EXT_ID}')"})
    ] == ["kept"]
    assert len(sb.delivered()) == 2


def test_mime_send(sb: Sandbox, api: Api) -> None:
    mime = EmailMessage()
    mime["To"] = "Alice <alice@fabrikam.example>, bob@fabrikam.example"
    mime["Subject"] = "MIME hello"
    mime["X-Campaign"] = "mime"
    mime.set_content("plain body")
    mime.add_attachment(b"data", maintype="application", subtype="octet-stream", filename="d.bin")
    response = api.post(
        f"/users/{SENDER}/sendMail", data=b64(mime.as_bytes()), headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 202, response.text
    [record] = sb.delivered()
    assert record.via == "mime" and record.recipients == ["alice@fabrikam.example", "bob@fabrikam.example"]
    assert record.subject == "MIME hello" and record.headers["X-Campaign"] == "mime"
    assert record.message["attachments"][0]["name"] == "d.bin"
    assert len(api.sent_items()) == 1
    bad = api.post(f"/users/{SENDER}/sendMail", data="%%%not base64", headers={"Content-Type": "text/plain"})
    assert error_code(bad) == (400, "ErrorMimeContentInvalidBase64String")

"""Helpers for the sandbox's tests: constants, hand-written messages, an HTTP client for Graph.

Graph calls are hand-written JSON over `requests` (never the client's code); authentication tests use
real msal against the HTTPS authority.
"""

from __future__ import annotations

import base64
from typing import Any

import requests

from mailmerge.sandbox import Sandbox

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "5f1b6a4e-0000-4000-8000-00000000c11e"
SECRET = "sandbox-secret-value"
SENDER = "news@contoso.example"
EXT_ID = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name MailMergeId"
GRAPH_SCOPE = ["https://graph.microsoft.com/.default"]


def message(
    to: str | list[str] = "alice@fabrikam.example",
    subject: str = "Hello",
    tag: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A sendMail message as a client would write it by hand."""
    recipients = [to] if isinstance(to, str) else to
    msg: dict[str, Any] = {
        "subject": subject,
        "body": {"contentType": "text", "content": f"Dear reader, {subject}."},
        "toRecipients": [{"emailAddress": {"address": a, "name": a.split("@")[0]}} for a in recipients],
    }
    if tag is not None:
        msg["singleValueExtendedProperties"] = [{"id": EXT_ID, "value": tag}]
    msg.update(extra)
    return msg


class Api:
    """Graph and token endpoint calls over a session that trusts the sandbox's CA."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.http = requests.Session()
        self.http.trust_env = False
        self.http.verify = str(sb.ca_file)
        self._token: str | None = None

    def close(self) -> None:
        self.http.close()

    def token_response(
        self,
        client_id: str = CLIENT_ID,
        secret: str = SECRET,
        tenant: str = TENANT,
        scope: str = GRAPH_SCOPE[0],
    ) -> requests.Response:
        form = {
            "client_id": client_id,
            "client_secret": secret,
            "grant_type": "client_credentials",
            "scope": scope,
        }
        return self.http.post(f"{self.sb.authority_host}/{tenant}/oauth2/v2.0/token", data=form, timeout=10)

    def token(self, **kwargs: Any) -> str:
        response = self.token_response(**kwargs)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    @property
    def default_token(self) -> str:
        if self._token is None:
            self._token = self.token()
        return self._token

    def headers(self, token: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token or self.default_token}"}
        headers.update(extra or {})
        return headers

    def post(
        self,
        path: str,
        json: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data: Any = None,
        timeout: float = 10,
    ) -> requests.Response:
        return self.http.post(
            self.sb.graph_base_url + path,
            json=json,
            data=data,
            timeout=timeout,
            headers=self.headers(token, headers),
        )

    def get(
        self, path: str, params: Any = None, token: str | None = None, timeout: float = 10
    ) -> requests.Response:
        return self.http.get(
            self.sb.graph_base_url + path, params=params, headers=self.headers(token), timeout=timeout
        )

    def send(
        self,
        msg: dict[str, Any] | None = None,
        mailbox: str = SENDER,
        token: str | None = None,
        timeout: float = 10,
        **params: Any,
    ) -> requests.Response:
        return self.post(
            f"/users/{mailbox}/sendMail",
            {"message": msg or message(), **params},
            token=token,
            timeout=timeout,
        )

    def batch(
        self, requests_: list[dict[str, Any]], token: str | None = None, timeout: float = 10
    ) -> requests.Response:
        return self.post("/$batch", {"requests": requests_}, token=token, timeout=timeout)

    def sent_items(self, mailbox: str = SENDER, **params: Any) -> list[dict[str, Any]]:
        response = self.get(f"/users/{mailbox}/mailFolders('sentitems')/messages", params=params)
        assert response.status_code == 200, response.text
        return list(response.json()["value"])


def send_item(
    item_id: str, msg: dict[str, Any] | None = None, mailbox: str = SENDER, **extra: Any
) -> dict[str, Any]:
    """A $batch item that sends one message."""
    item = {
        "id": item_id,
        "method": "POST",
        "url": f"/users/{mailbox}/sendMail",
        "headers": {"Content-Type": "application/json"},
        "body": {"message": msg or message()},
    }
    item.update(extra)
    return item


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

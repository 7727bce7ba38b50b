"""Sign-in through msal: tokens for Graph, and errors a person can fix in the Azure portal.

msal is synchronous (it uses requests), so token calls run in a worker thread; msal caches the
token and answers from memory until it nears expiry. Secrets are read from the environment at the
last moment and never enter a message, a log line or the database.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msal
import requests

from mailmerge.campaign import Campaign
from mailmerge.errors import AuthError, ConfigError

MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    }
)

#: What to do about the Entra ID errors people meet, by AADSTS number.
AADSTS_HINTS = {
    7000215: "the client secret is wrong or expired: create a new one under Certificates & secrets",
    7000222: "the client secret has expired: create a new one under Certificates & secrets",
    700016: "no application with this client_id exists in the tenant: check [auth] client_id and tenant",
    90002: "the tenant was not found: check [auth] tenant (a domain or the directory id)",
    65001: "the app lacks admin consent: an administrator must grant consent for Mail.Send "
    "(API permissions → Grant admin consent)",
    700027: "the certificate assertion was refused: upload the certificate under Certificates & secrets",
    50126: "the user name or password is wrong",
}


def graph_scope(graph_base_url: str) -> str:
    """The ``.default`` scope of the Graph endpoint in use (public cloud, national cloud or emulator)."""
    parts = urlsplit(graph_base_url)
    return f"{parts.scheme}://{parts.netloc}/.default"


def http_session(ca_file: str | Path | None) -> requests.Session:
    """The requests session msal uses: trusting ``ca_file`` when given (``trust_env`` off so that
    ``REQUESTS_CA_BUNDLE`` cannot override it), else the environment's trust settings."""
    session = requests.Session()
    if ca_file:
        session.trust_env = False
        session.verify = str(ca_file)
    return session


def auth_error(result: dict[str, Any], *, action: str) -> AuthError:
    """An msal error answer as an :class:`AuthError` with the hint that fixes it."""
    codes = result.get("error_codes") or []
    description = str(result.get("error_description") or result.get("error") or "unknown error")
    first_line = description.splitlines()[0]
    hint = next((AADSTS_HINTS[c] for c in codes if c in AADSTS_HINTS), None)
    if hint is None:
        match = re.search(r"AADSTS(\d+)", description)
        hint = AADSTS_HINTS.get(int(match.group(1))) if match else None
    return AuthError(
        f"{action} failed: {first_line}", hint=hint or "check the [auth] section of the campaign"
    )


class ClientCredentials:
    """App-only tokens (client credentials with a secret) for unattended runs."""

    delegated = False

    def __init__(
        self, *, authority: str, client_id: str, secret: str, scope: str, ca_file: str | Path | None = None
    ) -> None:
        self._scope = scope
        self._lock = asyncio.Lock()
        try:
            self._app = msal.ConfidentialClientApplication(
                client_id,
                client_credential=secret,
                authority=authority,
                http_client=http_session(ca_file),
                # msal validates only Microsoft's own hosts; any other (an emulator) is taken as given.
                instance_discovery=None
                if urlsplit(authority).hostname in MICROSOFT_AUTHORITY_HOSTS
                else False,
            )
        except ValueError as exc:
            raise AuthError(
                f"cannot use the authority {authority}: {exc}", hint="check [auth] authority and tenant"
            ) from exc
        except requests.RequestException as exc:
            raise AuthError(
                f"cannot reach the authority {authority}: {exc.__class__.__name__}",
                hint="check the network and [auth] authority",
            ) from exc

    def _acquire(self, force_refresh: bool) -> dict[str, Any]:
        if force_refresh:
            self._app.remove_tokens_for_client()
        try:
            return self._app.acquire_token_for_client(scopes=[self._scope])
        except requests.RequestException as exc:
            return {
                "error": "network",
                "error_description": f"cannot reach the token endpoint ({exc.__class__.__name__})",
            }

    async def token(self, *, force_refresh: bool = False) -> str:
        async with self._lock:
            result = await asyncio.to_thread(self._acquire, force_refresh)
        if "access_token" not in result:
            raise auth_error(result, action="getting an app-only token")
        return str(result["access_token"])


def client_secret(campaign: Campaign) -> str:
    """The client secret, from the environment variable the campaign names."""
    variable = campaign.settings.auth.client_secret_env
    if not variable:
        raise ConfigError(
            "no client secret configured",
            context="[auth] client_secret_env",
            hint='name the environment variable that holds it, e.g. "MAILMERGE_CLIENT_SECRET"',
        )
    secret = os.environ.get(variable)
    if not secret:
        raise AuthError(
            f"the environment variable {variable} is not set",
            hint=f"export {variable}=<the app's client secret> (never write it into the campaign file)",
        )
    return secret


def token_source(campaign: Campaign, *, secret: str | None = None) -> ClientCredentials:
    """The token source the campaign's ``[auth]`` section describes."""
    auth = campaign.settings.auth
    return ClientCredentials(
        authority=f"{auth.authority}/{auth.tenant}",
        client_id=auth.client_id,
        secret=secret if secret is not None else client_secret(campaign),
        scope=graph_scope(campaign.settings.graph.base_url),
        ca_file=campaign.resolve(auth.ca_file) if auth.ca_file else None,
    )

"""Sign-in through msal: tokens for Graph in every flow a sender needs, kept safely, refreshed silently.

Two kinds of senders:

- an organisation's unattended campaigns run **app-only** (client credentials, with a secret or a
  certificate; application permission Mail.Send) and send as ``/users/{mailbox}``;
- a person sends from **their own mailbox** (delegated Mail.Send + offline_access), signing in once
  with a device code or a browser (``mailmerge auth login``); later runs get tokens silently with the
  refresh token, and send as ``/me``.

msal is synchronous (requests), so token calls run in a worker thread. msal answers from its cache
until five minutes before a token expires and then fetches a new one; the engine asks for a token
before every request, so a campaign that runs for days keeps getting fresh ones. Secrets are read
at the last moment and never enter a message, a log line or the database; the tokens live only in
the token cache.

This module: scopes, the hints for Entra ID and Graph errors, the msal application and the token
sources the engine uses. Around it: :mod:`mailmerge.credentials` (secret, certificate),
:mod:`mailmerge.tokencache` (the cache on disk), :mod:`mailmerge.signin` (``auth login/status/
logout``) and :mod:`mailmerge.loopback` (the local end of a browser sign-in).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msal
import requests
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential

from mailmerge.campaign import Campaign
from mailmerge.credentials import client_secret, load_certificate
from mailmerge.errors import AuthError, ConfigError, MailmergeError, SendError
from mailmerge.tokencache import PersistentTokenCache, cache_file_name, default_folder, open_cache

MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    }
)
GRAPH_RESOURCE = "https://graph.microsoft.com"
#: Graph hosts of the national clouds, whose tokens are issued for that host rather than the public one.
NATIONAL_GRAPH_HOSTS = frozenset(
    {"graph.microsoft.us", "dod-graph.microsoft.us", "microsoftgraph.chinacloudapi.cn"}
)
DELEGATED_MODES = frozenset({"device_code", "auth_code"})


#: What to do about the Entra ID errors people meet, by AADSTS number. ``{consent_url}``, ``{login}``
#: and ``{mailbox}`` are filled in from the campaign.
AADSTS_HINTS: dict[int, str] = {
    7000215: "the client secret is wrong or expired: create a new one under Certificates & secrets",
    7000222: "the client secret has expired: create a new one under Certificates & secrets",
    700016: "no application with this client_id exists in the tenant: check [auth] client_id and tenant "
    "(the Application (client) ID on the app's Overview page)",
    90002: "the tenant was not found: check [auth] tenant (a domain such as contoso.onmicrosoft.com, or "
    "the Directory (tenant) ID)",
    900023: "the tenant is not a valid domain or directory id: check [auth] tenant",
    65001: "the app lacks consent: an administrator must grant it; open {consent_url}",
    65004: "the user declined consent: sign in again and accept, or ask an administrator: {consent_url}",
    700027: "the certificate was refused: upload its public part (.cer/.pem) under Certificates & secrets, "
    "and check [auth] certificate and thumbprint",
    700024: "the client assertion is outside its validity window: check this machine's clock",
    7000218: "this app is not a public client: enable 'Allow public client flows' under Authentication "
    "(needed for device-code sign-in)",
    50011: "add http://localhost as a redirect URI of the platform 'Mobile and desktop applications' "
    "under Authentication",
    50034: "no such user in the tenant: sign in as {mailbox}",
    50126: "the user name or password is wrong",
    50076: "multi-factor authentication is required: sign in again with {login}",
    50079: "multi-factor authentication must be set up: sign in again with {login}",
    53003: "a Conditional Access policy blocked the sign-in: ask your administrator",
    70008: "the sign-in expired: sign in again with {login}",
    700082: "the sign-in expired after a long time unused: sign in again with {login}",
    50173: "the sign-in was revoked (a password change?): sign in again with {login}",
    50133: "the sign-in was revoked (a password change?): sign in again with {login}",
    9002313: "the refresh token was refused: sign in again with {login}",
    70020: "the code expired before it was entered: run {login} again and enter it within the time shown",
    1002012: "the scope is wrong for this flow: check [graph] base_url",
}

#: What to do when Graph takes a sending mailbox out of the pool, by Graph error code.
GRAPH_HINTS: dict[str, str] = {
    "ErrorAccessDenied": "grant the application permission Mail.Send and admin consent, and check the "
    "application access policy for this mailbox",
    "Authorization_RequestDenied": "grant the application permission Mail.Send and admin consent, and "
    "check the application access policy for this mailbox",
    "ErrorSendAsDenied": "the sender may not send as this address: grant Send As on the mailbox in "
    "Exchange (Add-RecipientPermission -AccessRights SendAs), or send from the address itself",
    "MailboxNotEnabledForRESTAPI": "this address has no Exchange Online mailbox (on-premises, unlicensed, "
    "or not a mailbox): check [sender] and the user's Exchange Online licence",
    "ErrorMailboxNotEnabled": "this address has no Exchange Online mailbox: check [sender] and the "
    "user's Exchange Online licence",
    "ErrorInvalidUser": "no such user in the tenant: check the address in [sender]",
    "ResourceNotFound": "no such user or mailbox in the tenant: check the address in [sender]",
    "ErrorQuotaExceeded": "the mailbox reached a sending quota: wait, or lower [limits]",
    "ErrorSubmissionQuotaExceeded": "the mailbox reached its daily recipient limit: wait 24 hours, or "
    "lower [limits] daily_recipients",
    "InvalidAuthenticationToken": "Graph refused the token: check that [graph] base_url and [auth] "
    "authority belong to the same cloud",
}
_DELEGATED_GRAPH_HINTS = {
    "ErrorAccessDenied": "the signed-in user needs the delegated permission Mail.Send (consented) and a "
    "licensed mailbox of their own",
    "Authorization_RequestDenied": "the signed-in user needs the delegated permission Mail.Send (consented)",
}
#: Graph codes that mean the app or user lacks a permission (exit 4) or the mailbox is misnamed (exit 2).
PERMISSION_CODES = frozenset({"ErrorAccessDenied", "Authorization_RequestDenied", "ErrorSendAsDenied"})
MISNAMED_MAILBOX_CODES = frozenset(
    {"MailboxNotEnabledForRESTAPI", "ErrorMailboxNotEnabled", "ErrorInvalidUser", "ResourceNotFound"}
)


# -- logs ------------------------------------------------------------------------------------------------

#: Fields whose values are credentials, wherever msal's debug logs show them (JSON or form encoded).
SENSITIVE_FIELDS = (
    "access_token|refresh_token|id_token|client_secret|client_assertion|assertion|device_code|code"
    "|code_verifier|password|passphrase|private_key|secret"
)
_SENSITIVE_JSON = re.compile(rf'("(?:{SENSITIVE_FIELDS})"\s*:\s*)"[^"]*"')
_SENSITIVE_FORM = re.compile(rf"(\b(?:{SENSITIVE_FIELDS})=)[^&\s\"']+")
MSAL_LOGGERS = (
    "msal",
    "msal.application",
    "msal.authority",
    "msal.broker",
    "msal.cloudshell",
    "msal.oauth2cli.assertion",
    "msal.oauth2cli.authcode",
    "msal.oauth2cli.oauth2",
    "msal.oauth2cli.oidc",
    "msal.region",
    "msal.telemetry",
    "msal.token_cache",
    "msal_extensions.persistence",
    "msal_extensions.token_cache",
)


class RedactCredentials(logging.Filter):
    """Masks credential fields in log records: msal's debug log of a token answer masks the tokens
    but shows the device code, the authorization code and the PKCE verifier."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SENSITIVE_FORM.sub(r"\1***", _SENSITIVE_JSON.sub(r'\1"***"', message))
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _redact_msal_logs() -> None:
    for name in MSAL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactCredentials) for f in logger.filters):
            logger.addFilter(RedactCredentials())


_redact_msal_logs()


# -- endpoints and scopes ----------------------------------------------------------------------------


def graph_resource(graph_base_url: str) -> str:
    """The resource Graph tokens are issued for: a national cloud's own host, else the public Graph.

    An emulator or a proxy in front of Graph still needs tokens for Graph itself.
    """
    host = (urlsplit(graph_base_url).hostname or "").lower()
    return f"https://{host}" if host in NATIONAL_GRAPH_HOSTS else GRAPH_RESOURCE


def graph_scope(graph_base_url: str) -> str:
    """The ``.default`` scope app-only tokens are asked for."""
    return f"{graph_resource(graph_base_url)}/.default"


def delegated_scopes(campaign: Campaign) -> list[str]:
    """The delegated scopes a user signs in for (msal adds openid, profile and offline_access)."""
    resource = graph_resource(campaign.settings.graph.base_url)
    return [s if "://" in s else f"{resource}/{s}" for s in campaign.settings.auth.scopes]


def authority_url(campaign: Campaign) -> str:
    auth = campaign.settings.auth
    return f"{auth.authority}/{auth.tenant}"


def consent_url(campaign: Campaign) -> str:
    """Where an administrator grants the app's permissions for the whole tenant."""
    auth = campaign.settings.auth
    return f"{auth.authority}/{auth.tenant}/adminconsent?client_id={auth.client_id}"


def login_command(campaign: Campaign) -> str:
    return f"`mailmerge auth login {campaign.path}`"


def http_session(ca_file: str | Path | None) -> requests.Session:
    """The requests session msal uses: trusting ``ca_file`` when given (``trust_env`` off so that
    ``REQUESTS_CA_BUNDLE`` cannot override it), else the environment's trust settings."""
    session = requests.Session()
    if ca_file:
        session.trust_env = False
        session.verify = str(ca_file)
    return session


# -- errors a person can act on ----------------------------------------------------------------------


def _hint_for(codes: list[int], campaign: Campaign | None) -> str | None:
    for code in codes:
        template = AADSTS_HINTS.get(code)
        if template is not None:
            if campaign is None:
                return template.format(
                    consent_url="the admin-consent URL",
                    login="`mailmerge auth login`",
                    mailbox="the sending mailbox",
                )
            return template.format(
                consent_url=consent_url(campaign),
                login=login_command(campaign),
                mailbox=", ".join(campaign.mailboxes),
            )
    return None


def auth_error(
    result: dict[str, Any], *, action: str, campaign: Campaign | None = None, hint: str | None = None
) -> AuthError:
    """An msal error answer as an :class:`AuthError` with the hint that fixes it."""
    codes = [int(c) for c in result.get("error_codes") or [] if str(c).isdigit()]
    description = str(result.get("error_description") or result.get("error") or "unknown error")
    codes += [int(n) for n in re.findall(r"AADSTS(\d+)", description)]
    first_line = description.strip().splitlines()[0] if description.strip() else description
    return AuthError(
        f"{action} failed: {first_line}",
        hint=_hint_for(codes, campaign) or hint or "check the [auth] section of the campaign",
    )


def graph_hint(code: str | None, *, delegated: bool = False) -> str | None:
    """What to do about a Graph error code that stopped a mailbox (None when there is no advice)."""
    if code is None:
        return None
    if delegated and code in _DELEGATED_GRAPH_HINTS:
        return _DELEGATED_GRAPH_HINTS[code]
    return GRAPH_HINTS.get(code)


def stop_reason_hint(reason: str, *, delegated: bool = False) -> str | None:
    """The hint for a reason the engine recorded when it stopped a mailbox (``"code: message"``)."""
    return graph_hint(reason.split(":", 1)[0].strip(), delegated=delegated)


def stopped_mailboxes_error(
    stopped: dict[str, str], *, delegated: bool, campaign: Campaign
) -> MailmergeError:
    """The error for a run in which every mailbox was stopped: a permission problem (exit 4), a
    misnamed mailbox (exit 2), or anything else (exit 5)."""
    codes = {reason.split(":", 1)[0].strip() for reason in stopped.values()}
    hints = []
    for reason in stopped.values():
        hint = stop_reason_hint(reason, delegated=delegated)
        if hint and hint not in hints:
            hints.append(hint)
    resume = f"then run `mailmerge resume {campaign.path}`: nothing pending was lost"
    message = "no mailbox can send any more:\n" + "\n".join(f"  {m}: {r}" for m, r in stopped.items())
    hint = "; ".join([*hints, resume])
    if codes and codes <= PERMISSION_CODES:
        return AuthError(message, hint=hint)
    if codes and codes <= MISNAMED_MAILBOX_CODES:
        return ConfigError(message, hint=hint, context="[sender]")
    return SendError(message, hint=hint)


# -- msal applications -------------------------------------------------------------------------------


def token_cache_path(campaign: Campaign) -> Path:
    """``[auth] token_cache`` (a folder, relative to the campaign file), else the default folder; one
    file per tenant and app inside."""
    auth = campaign.settings.auth
    folder = campaign.resolve(auth.token_cache) if auth.token_cache else default_folder()
    return folder / cache_file_name(auth.tenant, auth.client_id)


def open_token_cache(campaign: Campaign) -> tuple[PersistentTokenCache, str | None]:
    return open_cache(token_cache_path(campaign), campaign.settings.auth.token_cache_encryption)


def msal_call(action: str, campaign: Campaign, call: Callable[[], Any]) -> Any:
    """Run an msal call, turning network and authority failures into :class:`AuthError`."""
    authority = authority_url(campaign)
    try:
        return call()
    except requests.RequestException as exc:
        raise AuthError(
            f"{action} failed: cannot reach {authority} ({exc.__class__.__name__})",
            hint="check the network, a proxy (HTTPS_PROXY) and [auth] authority",
        ) from exc
    except ValueError as exc:  # msal: a bad authority or tenant, a state mismatch
        detail = f"{exc} {exc.__context__ or ''}"
        codes = [int(n) for n in re.findall(r"AADSTS(\d+)", detail)]
        raise AuthError(
            f"{action} failed: {str(exc).splitlines()[0]}",
            hint=_hint_for(codes, campaign) or "check [auth] authority and tenant",
        ) from exc


def msal_app(campaign: Campaign, *, secret: str | None = None) -> msal.ClientApplication:
    """The msal application the campaign's ``[auth]`` describes, on its persistent token cache.

    Building it asks the authority for its endpoints (a network call).
    """
    auth = campaign.settings.auth
    authority = authority_url(campaign)
    host = urlsplit(authority).hostname
    options: dict[str, Any] = {
        "authority": authority,
        "http_client": http_session(campaign.resolve(auth.ca_file) if auth.ca_file else None),
        "token_cache": open_token_cache(campaign)[0],
        # msal validates only Microsoft's own hosts; any other (an emulator) is taken as given.
        "instance_discovery": None if host in MICROSOFT_AUTHORITY_HOSTS else False,
    }
    if auth.mode in DELEGATED_MODES:
        return msal_call(
            "reaching the authority",
            campaign,
            lambda: msal.PublicClientApplication(auth.client_id, **options),
        )
    if secret is None and auth.certificate:
        credential: str | dict[str, str] = load_certificate(campaign).credential
    else:
        credential = secret if secret is not None else client_secret(campaign)
    return msal_call(
        "reaching the authority",
        campaign,
        lambda: msal.ConfidentialClientApplication(auth.client_id, client_credential=credential, **options),
    )


# -- token sources (what the engine asks) ------------------------------------------------------------


class _Tokens:
    """A token source: one msal call at a time, in a worker thread.

    The token is also kept in memory until it nears expiry, so the engine's request for a token per
    batch costs nothing; msal itself (and its persistent cache) is asked only to refresh.
    """

    delegated = False
    #: Attempts at the token endpoint when it fails transiently (network, temporarily_unavailable),
    #: and the wait between them.
    attempts = 3
    retry_wait: Any = wait_exponential(multiplier=1, min=1, max=10)
    #: Renew when less than this share of the token's lifetime is left (at most five minutes).
    renew_share = 0.5

    def __init__(self, campaign: Campaign, app: msal.ClientApplication) -> None:
        self.campaign = campaign
        self.app = app
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def _acquire(self, force_refresh: bool) -> dict[str, Any] | None:
        raise NotImplementedError

    def _acquire_once(self, force_refresh: bool) -> dict[str, Any]:
        try:
            return self._acquire(force_refresh) or {}
        except requests.RequestException as exc:
            return {
                "error": "network",
                "error_description": f"cannot reach the authority ({exc.__class__.__name__})",
            }

    def _fetch(self, force_refresh: bool) -> dict[str, Any]:
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=self.retry_wait,
            retry=retry_if_result(lambda r: r.get("error") in {"network", "temporarily_unavailable"}),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else {},
            reraise=True,
        )
        result: dict[str, Any] = retrying(self._acquire_once, force_refresh)
        if "access_token" not in result:
            raise self._failure(result)
        return result

    def _failure(self, result: dict[str, Any] | None) -> AuthError:
        raise NotImplementedError

    async def token(self, *, force_refresh: bool = False) -> str:
        async with self._lock:
            if not force_refresh and self._token and time.monotonic() < self._renew_at:
                return self._token
            result = await asyncio.to_thread(self._fetch, force_refresh)
            lifetime = float(result.get("expires_in") or 0)
            self._token = str(result["access_token"])
            self._renew_at = time.monotonic() + lifetime - min(300.0, lifetime * self.renew_share)
            return self._token


class AppTokens(_Tokens):
    """App-only tokens (client credentials with a secret or a certificate) for unattended runs."""

    delegated = False

    def _acquire(self, force_refresh: bool) -> dict[str, Any] | None:
        assert isinstance(self.app, msal.ConfidentialClientApplication)
        if force_refresh:
            self.app.remove_tokens_for_client()
        scope = graph_scope(self.campaign.settings.graph.base_url)
        return dict(self.app.acquire_token_for_client(scopes=[scope]))

    def _failure(self, result: dict[str, Any] | None) -> AuthError:
        return auth_error(result or {}, action="getting an app-only token", campaign=self.campaign)


class UserTokens(_Tokens):
    """Delegated tokens of the signed-in sender, refreshed silently with the refresh token."""

    delegated = True

    def __init__(self, campaign: Campaign, app: msal.ClientApplication) -> None:
        super().__init__(campaign, app)
        self.mailbox = campaign.mailboxes[0]
        self._account: dict[str, Any] | None = None

    def account(self) -> dict[str, Any]:
        """The cached account of ``[sender] mailbox``; refuses when another user signed in."""
        if self._account is None:
            self._account = find_account(self.campaign, self.app)
        return self._account

    def _acquire(self, force_refresh: bool) -> dict[str, Any] | None:
        result = self.app.acquire_token_silent_with_error(
            delegated_scopes(self.campaign), self.account(), force_refresh=force_refresh
        )
        return dict(result) if result else None

    def _failure(self, result: dict[str, Any] | None) -> AuthError:
        if not result:
            return AuthError(
                f"no token for {self.mailbox} in the token cache (signed out?)",
                hint=f"sign in once with {login_command(self.campaign)}",
            )
        return auth_error(
            result,
            action=f"refreshing the sign-in of {self.mailbox}",
            campaign=self.campaign,
            hint=f"sign in again with {login_command(self.campaign)}",
        )


def find_account(campaign: Campaign, app: msal.ClientApplication) -> dict[str, Any]:
    """The signed-in account whose name is ``[sender] mailbox``."""
    mailbox = campaign.mailboxes[0]
    accounts = app.get_accounts()
    matching = [a for a in accounts if str(a.get("username", "")).lower() == mailbox.lower()]
    if matching:
        return dict(matching[0])
    if accounts:
        others = ", ".join(sorted(str(a.get("username")) for a in accounts))
        raise AuthError(
            f"the token cache holds a sign-in for {others}, not for [sender] mailbox {mailbox}",
            hint=f"run {login_command(campaign)} and sign in as {mailbox}: a delegated token sends only "
            "as the user who signed in",
        )
    raise AuthError(
        f"nobody is signed in as {mailbox}",
        hint=f"sign in once with {login_command(campaign)}; later runs refresh the token silently",
    )


def token_source(campaign: Campaign, *, secret: str | None = None) -> AppTokens | UserTokens:
    """The token source the campaign's ``[auth]`` section describes (``secret`` overrides the
    configured client secret, as the sandbox does)."""
    app = msal_app(campaign, secret=secret)
    if campaign.settings.auth.mode in DELEGATED_MODES:
        return UserTokens(campaign, app)
    return AppTokens(campaign, app)

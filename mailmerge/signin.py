"""Signing in, seeing how a campaign signs in, and signing out: what ``mailmerge auth`` does.

``login`` runs the campaign's flow once and leaves the tokens in the persistent cache: a device code
the user enters in any browser, or a browser sign-in answered on ``http://localhost:PORT``; for
app-only campaigns it fetches a token to prove the credential and the consent. ``status`` and
``logout`` read and change the cache alone, without the network.
"""

from __future__ import annotations

import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msal

from mailmerge.auth import (
    DELEGATED_MODES,
    auth_error,
    authority_url,
    delegated_scopes,
    graph_scope,
    login_command,
    msal_app,
    msal_call,
    open_token_cache,
)
from mailmerge.campaign import Campaign
from mailmerge.credentials import credential_description
from mailmerge.errors import AuthError
from mailmerge.loopback import RedirectListener
from mailmerge.tokencache import PersistentTokenCache

BROWSER_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class DeviceCodePrompt:
    """What the user must do to approve a device-code sign-in."""

    verification_uri: str
    user_code: str
    expires_in: int
    message: str


@dataclass(frozen=True)
class SignedIn:
    mode: str
    account: str | None  # the user (delegated) or None (app-only)
    expires_at: float | None


def _expires_at(result: dict[str, Any]) -> float | None:
    expires_in = result.get("expires_in")
    return time.time() + float(expires_in) if expires_in is not None else None


def login(
    campaign: Campaign,
    *,
    show_device_code: Callable[[DeviceCodePrompt], None] | None = None,
    open_browser: Callable[[str], object] = webbrowser.open,
    show_auth_url: Callable[[str], None] | None = None,
    secret: str | None = None,
    browser_timeout: float = BROWSER_TIMEOUT_SECONDS,
) -> SignedIn:
    """Sign in the way ``[auth] mode`` says and keep the tokens in the cache.

    App-only: get a token now (proves the credential and the consent). Device code: show the code
    (``show_device_code``), wait until the user has entered it. Browser: listen on
    ``http://localhost:PORT``, open the sign-in page (``open_browser``, injectable for tests), wait
    for the redirect. A delegated sign-in must be the ``[sender] mailbox`` user, or it is not kept.
    """
    auth = campaign.settings.auth
    app = msal_app(campaign, secret=secret)
    if auth.mode not in DELEGATED_MODES:
        assert isinstance(app, msal.ConfidentialClientApplication)
        scope = graph_scope(campaign.settings.graph.base_url)
        result = msal_call(
            "getting an app-only token", campaign, lambda: app.acquire_token_for_client(scopes=[scope])
        )
        if "access_token" not in result:
            raise auth_error(result, action="getting an app-only token", campaign=campaign)
        return SignedIn(auth.mode, None, _expires_at(result))
    scopes = delegated_scopes(campaign)
    if auth.mode == "device_code":
        flow = msal_call(
            "starting the device-code sign-in", campaign, lambda: app.initiate_device_flow(scopes)
        )
        if "user_code" not in flow:
            raise auth_error(flow, action="starting the device-code sign-in", campaign=campaign)
        if show_device_code is not None:
            show_device_code(
                DeviceCodePrompt(
                    str(flow.get("verification_uri")),
                    str(flow["user_code"]),
                    int(flow.get("expires_in", 900)),
                    str(flow.get("message", "")),
                )
            )
        result = msal_call(
            "the device-code sign-in", campaign, lambda: app.acquire_token_by_device_flow(flow)
        )
    else:
        with RedirectListener(auth.redirect_port) as listener:
            flow = msal_call(
                "starting the browser sign-in",
                campaign,
                lambda: app.initiate_auth_code_flow(
                    scopes,
                    redirect_uri=listener.redirect_uri,
                    login_hint=campaign.mailboxes[0],
                    response_mode="form_post",  # the code travels in a POST body, not a URL
                ),
            )
            if show_auth_url is not None:
                show_auth_url(flow["auth_uri"])
            open_browser(flow["auth_uri"])
            answer = listener.wait(browser_timeout)
        result = msal_call(
            "the browser sign-in", campaign, lambda: app.acquire_token_by_auth_code_flow(flow, answer)
        )
    if "access_token" not in result:
        raise auth_error(result, action="signing in", campaign=campaign)
    return SignedIn(auth.mode, _check_signed_in_user(campaign, app, result), _expires_at(result))


def _check_signed_in_user(campaign: Campaign, app: msal.ClientApplication, result: dict[str, Any]) -> str:
    claims = result.get("id_token_claims") or {}
    user = str(claims.get("preferred_username") or claims.get("upn") or "")
    mailbox = campaign.mailboxes[0]
    if user.lower() != mailbox.lower():
        for account in app.get_accounts(username=user) if user else []:
            app.remove_account(account)
        raise AuthError(
            f"signed in as {user or 'an unknown user'}, but [sender] mailbox is {mailbox}; the sign-in was "
            "not kept",
            hint=f"run {login_command(campaign)} again and sign in as {mailbox} (a delegated token sends "
            "only as the user who signed in)",
        )
    return user


@dataclass(frozen=True)
class AuthStatus:
    """What ``mailmerge auth status`` shows; read from the cache alone, without the network."""

    mode: str
    credential: str
    authority: str
    client_id: str
    account: str | None
    other_accounts: tuple[str, ...]
    access_token_expires_at: float | None
    has_refresh_token: bool
    cache_path: Path
    cache_encrypted: bool
    cache_description: str
    cache_fallback_reason: str | None


def _cached(cache: PersistentTokenCache, kind: str, **query: Any) -> list[dict[str, Any]]:
    return [dict(e) for e in cache.search(kind, query=query)]


def status(campaign: Campaign) -> AuthStatus:
    """Which flow, which account or app, when the cached token expires, where the cache is."""
    auth = campaign.settings.auth
    cache, fallback = open_token_cache(campaign)
    environment = urlsplit(auth.authority).hostname
    kinds = msal.TokenCache.CredentialType
    account = None
    others: list[str] = []
    home: str | None = None
    if auth.mode in DELEGATED_MODES:
        mailbox = campaign.mailboxes[0].lower()
        for entry in _cached(cache, kinds.ACCOUNT, environment=environment):
            name = str(entry.get("username", ""))
            if name.lower() == mailbox:
                account, home = name, entry.get("home_account_id")
            else:
                others.append(name)
    tokens = _cached(
        cache, kinds.ACCESS_TOKEN, client_id=auth.client_id, environment=environment, home_account_id=home
    )
    refresh = (
        _cached(cache, kinds.REFRESH_TOKEN, client_id=auth.client_id, home_account_id=home) if home else []
    )
    expiry = max((float(t["expires_on"]) for t in tokens), default=None)
    return AuthStatus(
        mode=auth.mode,
        credential=credential_description(campaign),
        authority=authority_url(campaign),
        client_id=auth.client_id,
        account=account,
        other_accounts=tuple(others),
        access_token_expires_at=expiry,
        has_refresh_token=bool(refresh),
        cache_path=cache.path,
        cache_encrypted=cache.encrypted,
        cache_description=cache.store.description,
        cache_fallback_reason=fallback,
    )


def logout(campaign: Campaign) -> list[str]:
    """Remove the sender's tokens (delegated) or the app's tokens (app-only) from the cache; returns
    what was removed, in words. Works offline."""
    auth = campaign.settings.auth
    cache, _ = open_token_cache(campaign)
    environment = urlsplit(auth.authority).hostname
    kinds = msal.TokenCache.CredentialType
    removed: list[str] = []
    with cache.writing():
        if auth.mode not in DELEGATED_MODES:
            tokens = _cached(
                cache,
                kinds.ACCESS_TOKEN,
                client_id=auth.client_id,
                environment=environment,
                home_account_id=None,
            )
            for token in tokens:
                cache.remove_at(token)
            if tokens:
                removed.append(f"{len(tokens)} app-only token(s) of {auth.client_id}")
            return removed
        mailbox = campaign.mailboxes[0].lower()
        for account in _cached(cache, kinds.ACCOUNT, environment=environment):
            if str(account.get("username", "")).lower() != mailbox:
                continue
            mine = {"home_account_id": account["home_account_id"], "environment": environment}
            for kind, remove in (
                (kinds.REFRESH_TOKEN, cache.remove_rt),
                (kinds.ACCESS_TOKEN, cache.remove_at),
                (kinds.ID_TOKEN, cache.remove_idt),
            ):
                for entry in _cached(cache, kind, **mine):
                    remove(entry)
            cache.remove_account(account)
            removed.append(str(account.get("username")))
    return removed

"""``--sandbox``: run a campaign against the embedded Graph emulator instead of Microsoft.

Only the endpoints change: the campaign's authority and Graph URLs are pointed at the emulator
(HTTPS on 127.0.0.1, trusted through its throwaway CA), its app and mailboxes are registered there
with a one-off secret, and everything else — msal, aiohttp, the store — runs exactly as it would
against Microsoft. The emulator keeps what it delivered in ``<campaign>.sandbox/`` beside the
campaign file, so a rehearsal can be interrupted and resumed like a real run.

Sign-in is rehearsed too, with the campaign's own flow: app-only with a one-off secret (or the
campaign's certificate, whose public part is registered); device code with the emulator approving
the code for ``[sender] mailbox`` itself; browser sign-in with the rehearsal following the redirect
to the local listener itself. Sandbox tokens go to a temporary cache, never the user's real one.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import requests

from mailmerge import signin
from mailmerge.campaign import Campaign
from mailmerge.credentials import load_certificate
from mailmerge.sandbox import Profile, Sandbox


@dataclass(frozen=True)
class Rehearsal:
    """A running emulator and the campaign pointed at it."""

    sandbox: Sandbox
    campaign: Campaign
    secret: str | None
    outbox: Path
    notes: tuple[str, ...] = ()


def outbox_for(campaign: Campaign) -> Path:
    return campaign.path.with_name(f"{campaign.path.stem}.sandbox")


@contextmanager
def rehearse(campaign: Campaign, profile: Profile | None = None) -> Iterator[Rehearsal]:
    """Start the emulator for ``campaign`` and sign in there; stop it on exit."""
    outbox = outbox_for(campaign)
    sandbox = Sandbox(profile or Profile(), outbox=outbox)
    with tempfile.TemporaryDirectory(prefix="mailmerge-sandbox-tokens-") as token_folder:
        sandbox.start()
        try:
            for mailbox in campaign.mailboxes:
                sandbox.add_mailbox(mailbox)
            pointed = _pointed(campaign, sandbox, token_folder)
            secret, notes = _register_and_sign_in(sandbox, pointed)
            yield Rehearsal(sandbox=sandbox, campaign=pointed, secret=secret, outbox=outbox, notes=notes)
        finally:
            sandbox.stop()


def _pointed(campaign: Campaign, sandbox: Sandbox, token_folder: str) -> Campaign:
    """The campaign aimed at the emulator, keeping its tokens in a throwaway plain-file cache."""
    pointed = campaign.with_endpoints(
        authority=sandbox.authority_host, graph_base_url=sandbox.graph_base_url, ca_file=sandbox.ca_file
    )
    auth = pointed.settings.auth.model_copy(
        update={"token_cache": token_folder, "token_cache_encryption": "off"}
    )
    return Campaign(pointed.settings.model_copy(update={"auth": auth}), pointed.path)


def _register_and_sign_in(sandbox: Sandbox, campaign: Campaign) -> tuple[str | None, tuple[str, ...]]:
    """Register the campaign's app as its flow needs; delegated flows also sign in now."""
    auth = campaign.settings.auth
    if not auth.delegated:
        if auth.certificate:
            certificate = load_certificate(campaign)
            public = certificate.credential.get("public_certificate")
            if public:
                sandbox.register_app(
                    tenant=auth.tenant, client_id=auth.client_id, certificate_pem=public.encode()
                )
                return None, (f"signing in with the certificate {certificate.path}",)
        secret = secrets.token_urlsafe(24)
        sandbox.register_app(tenant=auth.tenant, client_id=auth.client_id, secret=secret)
        return secret, ()
    sandbox.register_app(
        tenant=auth.tenant,
        client_id=auth.client_id,
        delegated_permissions=tuple(scope.rsplit("/", 1)[-1] for scope in auth.scopes),
        public_client=True,
    )
    mailbox = campaign.mailboxes[0]
    approved: list[str] = []

    def approve(prompt: signin.DeviceCodePrompt) -> None:
        sandbox.approve_device_code(prompt.user_code, mailbox)
        approved.append(prompt.user_code)

    signin.login(campaign, show_device_code=approve, open_browser=_browser_for(sandbox))
    if approved:
        return None, (f"approved the device code {approved[0]} as {mailbox} (as a user would in a browser)",)
    return None, (f"signed in as {mailbox} in the browser flow (following the redirect itself)",)


def _browser_for(sandbox: Sandbox) -> Callable[[str], object]:
    """A stand-in browser: load the sign-in page and deliver its answer to the local listener, by
    following the redirect (``response_mode=query``) or submitting the form (``form_post``)."""

    def open_page(url: str) -> bool:
        with requests.Session() as browser:
            browser.trust_env = False  # no proxy for loopback; trust the emulator's CA only
            browser.verify = str(sandbox.ca_file)
            page = browser.get(url, allow_redirects=False, timeout=30)
            location = page.headers.get("Location")
            if location:
                browser.get(location, timeout=30)
                return True
            form = _FormReader()
            form.feed(page.text)
            if form.action:
                browser.post(form.action, data=form.fields, timeout=30)
        return True

    return open_page


class _FormReader(HTMLParser):
    """The action and hidden fields of the auto-submitting form of a ``form_post`` answer."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action")
        elif tag == "input" and "name" in values:
            self.fields[values["name"]] = values.get("value", "")

"""Every sign-in flow with real msal against the emulator's HTTPS authority, and campaigns sent with
the tokens they give: client secret, certificate, device code, browser (auth code), silent refresh,
a 401 in the middle of a run, sign-out, and the errors a person can act on."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailmerge import auth, signin
from mailmerge.auth import AppTokens, UserTokens, token_source
from mailmerge.campaign import Campaign, load_campaign
from mailmerge.errors import AuthError, ExitCode
from mailmerge.rehearsal import rehearse
from mailmerge.runner import import_recipients, open_store, send
from mailmerge.sandbox import Profile, Sandbox
from mailmerge.send.engine import RunSummary
from mailmerge.send.transport import AiohttpTransport
from mailmerge.store import Status
from tests.auth_support import (
    MAILBOX,
    TENANT,
    RecordingSession,
    browser_for,
    make_certificate,
    recording_session,
    write_campaign,
)

SECRET = "s3cret-Value~for.tests"


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> type[RecordingSession]:
    RecordingSession.issued, RecordingSession.grants = [], []
    monkeypatch.setattr(auth, "http_session", recording_session)
    return RecordingSession


def sandbox_with(lifetime: int = 3600) -> Iterator[Sandbox]:
    with Sandbox(Profile(token_lifetime_seconds=lifetime)) as sandbox:
        sandbox.add_mailbox(MAILBOX)
        yield sandbox


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    yield from sandbox_with()


@pytest.fixture
def short_lived() -> Iterator[Sandbox]:
    """Access tokens that expire after a second, so a campaign outlives several of them."""
    yield from sandbox_with(lifetime=1)


def approve_as(sandbox: Sandbox, user: str = MAILBOX) -> Callable[[signin.DeviceCodePrompt], None]:
    """Approve the code from another thread a moment later, while msal is already polling."""

    def show(prompt: signin.DeviceCodePrompt) -> None:
        def later() -> None:
            time.sleep(0.2)
            sandbox.approve_device_code(prompt.user_code, user)

        threading.Thread(target=later, daemon=True).start()

    return show


def send_all(campaign: Campaign, tokens: Any) -> RunSummary:
    with open_store(campaign) as store:
        import_recipients(campaign, store)
        transport = AiohttpTransport(ca_file=campaign.settings.graph.ca_file)
        return asyncio.run(send(campaign, store, transport=transport, tokens=tokens))


def jwt_header(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))))


# -- app-only ------------------------------------------------------------------------------------------


def test_client_secret_signs_in_and_sends_as_the_mailbox(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_cache: Path
) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-1", secret=SECRET)
    monkeypatch.setenv("MM_SECRET", SECRET)
    campaign = load_campaign(write_campaign(tmp_path, sandbox, auth='client_secret_env = "MM_SECRET"'))
    signed = signin.login(campaign)
    assert signed.account is None and signed.expires_at is not None
    tokens = token_source(campaign)
    assert isinstance(tokens, AppTokens) and tokens.delegated is False
    summary = send_all(campaign, tokens)
    assert summary.counts[Status.SENT] == 5
    assert {m.mailbox.lower() for m in sandbox.delivered()} == {MAILBOX}
    state = signin.status(campaign)
    assert state.account is None and state.access_token_expires_at is not None
    assert state.cache_path.parent == private_cache and not state.cache_encrypted
    assert "no keyring in tests" in (state.cache_fallback_reason or "")
    assert signin.logout(campaign) == ["1 app-only token(s) of app-1"]
    assert signin.status(campaign).access_token_expires_at is None


def test_certificate_with_passphrase_signs_in(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: type[RecordingSession]
) -> None:
    tmp_path.mkdir(exist_ok=True)
    _, cert_pem, _ = make_certificate(tmp_path, passphrase="pass phrase")
    sandbox.register_app(tenant=TENANT, client_id="app-cert", certificate_pem=cert_pem)
    monkeypatch.setenv("MM_CERT_PASS", "pass phrase")
    path = write_campaign(
        tmp_path,
        sandbox,
        client_id="app-cert",
        auth='certificate = "app.pem"\ncertificate_passphrase_env = "MM_CERT_PASS"',
    )
    campaign = load_campaign(path)
    signin.login(campaign)
    assertion = next(v for v in recorded.issued if v.count(".") == 2 and jwt_header(v).get("x5t#S256"))
    assert jwt_header(assertion)["alg"] == "PS256"  # signed with the key, SHA-256 thumbprint computed
    assert send_all(campaign, token_source(campaign)).counts[Status.SENT] == 5


def test_certificate_not_registered_is_explained(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-cert", secret="other")
    make_certificate(tmp_path)
    campaign = load_campaign(
        write_campaign(tmp_path, sandbox, client_id="app-cert", auth='certificate = "app.pem"')
    )
    with pytest.raises(AuthError) as caught:
        signin.login(campaign)
    assert "upload its public part" in (caught.value.hint or "")


@pytest.mark.parametrize(
    ("register", "client_id", "tenant", "hint"),
    [
        ({"secret": "the-right-one"}, "app-1", TENANT, "the client secret is wrong or expired"),
        ({"secret": SECRET, "admin_consent": False}, "app-1", TENANT, "/adminconsent?client_id=app-1"),
        ({"secret": SECRET}, "app-unknown", TENANT, "check [auth] client_id"),
        ({"secret": SECRET}, "app-1", "fabrikam.onmicrosoft.com", "check [auth] tenant"),
    ],
)
def test_entra_refusals_are_auth_errors_with_a_hint(
    sandbox: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    register: dict[str, Any],
    client_id: str,
    tenant: str,
    hint: str,
) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-1", **register)
    monkeypatch.setenv("MM_SECRET", SECRET)
    path = write_campaign(tmp_path, sandbox, client_id=client_id, auth='client_secret_env = "MM_SECRET"')
    path.write_text(path.read_text().replace(f'tenant = "{TENANT}"', f'tenant = "{tenant}"'))
    campaign = load_campaign(path)
    with pytest.raises(AuthError) as caught:
        asyncio.run(token_source(campaign).token())
    assert hint in (caught.value.hint or ""), caught.value
    assert caught.value.exit_code is ExitCode.AUTH
    assert SECRET not in str(caught.value)


# -- delegated -----------------------------------------------------------------------------------------


def test_device_code_once_then_silent_runs_as_me(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-dc", public_client=True)
    campaign = load_campaign(write_campaign(tmp_path, sandbox, mode="device_code", client_id="app-dc"))
    prompts: list[signin.DeviceCodePrompt] = []
    approve = approve_as(sandbox)

    def show(prompt: signin.DeviceCodePrompt) -> None:
        prompts.append(prompt)
        approve(prompt)

    signed = signin.login(campaign, show_device_code=show)
    assert signed.account == MAILBOX
    assert prompts[0].verification_uri.endswith("/devicelogin") and prompts[0].user_code
    state = signin.status(campaign)
    assert (state.account, state.has_refresh_token) == (MAILBOX, True)
    tokens = token_source(campaign)
    assert isinstance(tokens, UserTokens) and tokens.delegated is True
    assert send_all(campaign, tokens).counts[Status.SENT] == 5
    assert {m.mailbox.lower() for m in sandbox.delivered()} == {MAILBOX}
    assert any("/me/sendMail" in str(entry.get("path")) for entry in sandbox.request_log())


def test_a_sign_in_as_someone_else_is_refused_and_not_kept(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-dc", public_client=True)
    sandbox.add_mailbox("someone.else@contoso.example")
    campaign = load_campaign(write_campaign(tmp_path, sandbox, mode="device_code", client_id="app-dc"))
    with pytest.raises(AuthError, match=r"signed in as someone.else@contoso.example, but \[sender\] mailbox"):
        signin.login(campaign, show_device_code=approve_as(sandbox, "someone.else@contoso.example"))
    state = signin.status(campaign)
    assert (state.account, state.other_accounts, state.has_refresh_token) == (None, (), False)
    with pytest.raises(AuthError, match="nobody is signed in") as caught:
        asyncio.run(token_source(campaign).token())
    assert "auth login" in (caught.value.hint or "")


def test_device_code_needs_a_public_client(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-dc", public_client=False)
    campaign = load_campaign(write_campaign(tmp_path, sandbox, mode="device_code", client_id="app-dc"))
    with pytest.raises(AuthError) as caught:
        signin.login(campaign, show_device_code=approve_as(sandbox))
    assert "Allow public client flows" in (caught.value.hint or "")


def test_browser_sign_in_on_a_local_redirect(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-ac", public_client=True)
    campaign = load_campaign(write_campaign(tmp_path, sandbox, mode="auth_code", client_id="app-ac"))
    shown: list[str] = []
    signed = signin.login(campaign, open_browser=browser_for(sandbox), show_auth_url=shown.append)
    assert signed.account == MAILBOX
    assert "redirect_uri=http%3A%2F%2Flocalhost%3A" in shown[0] and "response_mode=form_post" in shown[0]
    assert send_all(campaign, token_source(campaign)).counts[Status.SENT] == 5


def test_a_browser_that_never_answers_times_out(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-ac", public_client=True)
    campaign = load_campaign(write_campaign(tmp_path, sandbox, mode="auth_code", client_id="app-ac"))
    with pytest.raises(AuthError, match="no sign-in answer reached http://localhost:"):
        signin.login(campaign, open_browser=lambda url: False, browser_timeout=0.2)


def test_silent_refresh_when_the_token_expires_mid_campaign(
    short_lived: Sandbox, tmp_path: Path, recorded: type[RecordingSession]
) -> None:
    short_lived.register_app(tenant=TENANT, client_id="app-dc", public_client=True)
    campaign = load_campaign(write_campaign(tmp_path, short_lived, mode="device_code", client_id="app-dc"))
    signin.login(campaign, show_device_code=approve_as(short_lived))
    time.sleep(1.1)  # the access token from the sign-in has expired
    signed_in_at = len(recorded.grants)
    summary = send_all(campaign, token_source(campaign))
    assert summary.counts[Status.SENT] == 5
    later = recorded.grants[signed_in_at:]
    assert later and set(later) == {"refresh_token"}  # silent: no new device code, no user
    assert len(short_lived.delivered()) == 5


def test_a_401_gets_one_fresh_token_and_only_the_refused_items_again(
    short_lived: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short_lived.register_app(tenant=TENANT, client_id="app-1", secret=SECRET)
    monkeypatch.setenv("MM_SECRET", SECRET)
    campaign = load_campaign(write_campaign(tmp_path, short_lived, auth='client_secret_env = "MM_SECRET"'))
    real = token_source(campaign)
    stale = asyncio.run(real.token())
    time.sleep(1.1)  # Graph will now answer 401 InvalidAuthenticationToken for it

    class StaleFirst:
        delegated = False

        def __init__(self) -> None:
            self.asked: list[bool] = []

        async def token(self, *, force_refresh: bool = False) -> str:
            self.asked.append(force_refresh)
            return stale if len(self.asked) == 1 else await real.token(force_refresh=force_refresh)

    tokens = StaleFirst()
    summary = send_all(campaign, tokens)
    assert summary.counts[Status.SENT] == 5
    assert tokens.asked[0] is False and True in tokens.asked  # the engine asked for a fresh one
    assert any(entry.get("status") == 401 for entry in short_lived.request_log())
    assert sorted(r for m in short_lived.delivered() for r in m.recipients) == [
        f"p{i}@fabrikam.example" for i in range(1, 6)
    ]


def test_logout_removes_the_account_and_the_next_run_asks_to_sign_in(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-dc", public_client=True)
    campaign = load_campaign(write_campaign(tmp_path, sandbox, mode="device_code", client_id="app-dc"))
    signin.login(campaign, show_device_code=approve_as(sandbox))
    assert signin.logout(campaign) == [MAILBOX]
    assert signin.logout(campaign) == []
    state = signin.status(campaign)
    assert (state.account, state.has_refresh_token, state.access_token_expires_at) == (None, False, None)
    cache = json.loads(state.cache_path.read_text())
    assert not cache.get("RefreshToken") and not cache.get("AccessToken") and not cache.get("Account")
    with pytest.raises(AuthError, match="nobody is signed in"):
        asyncio.run(token_source(campaign).token())


# -- rehearsals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "note"), [("device_code", "approved the device code"), ("auth_code", "in the browser flow")]
)
def test_sandbox_rehearsal_signs_in_delegated_campaigns_itself(
    tmp_path: Path, mode: str, note: str, private_cache: Path
) -> None:
    with Sandbox() as placeholder:  # only to fill in the campaign file; the rehearsal starts its own
        path = write_campaign(tmp_path, placeholder, mode=mode, client_id="app-r")
    campaign = load_campaign(path)
    with rehearse(campaign) as rehearsal:
        assert any(note in n for n in rehearsal.notes)
        assert rehearsal.secret is None
        summary = send_all(rehearsal.campaign, token_source(rehearsal.campaign))
        assert summary.counts[Status.SENT] == 5
        assert len(rehearsal.sandbox.delivered()) == 5
    assert not private_cache.exists()  # sandbox tokens never reach the real cache


def test_sandbox_rehearsal_uses_the_campaign_certificate(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    make_certificate(tmp_path)
    with Sandbox() as placeholder:
        path = write_campaign(tmp_path, placeholder, auth='certificate = "app.pem"')
    with rehearse(load_campaign(path)) as rehearsal:
        assert rehearsal.secret is None and "certificate" in rehearsal.notes[0]
        summary = send_all(rehearsal.campaign, token_source(rehearsal.campaign, secret=rehearsal.secret))
        assert summary.counts[Status.SENT] == 5

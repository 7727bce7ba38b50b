"""The [auth] section, the credentials and the hints: everything about sign-in that needs no network."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import msal
import pytest
from tenacity import wait_none

from mailmerge.auth import (
    AppTokens,
    auth_error,
    consent_url,
    delegated_scopes,
    graph_hint,
    graph_scope,
    stop_reason_hint,
    stopped_mailboxes_error,
    token_cache_path,
)
from mailmerge.campaign import Campaign, load_campaign
from mailmerge.credentials import client_secret, credential_description, load_certificate
from mailmerge.errors import AuthError, ConfigError, ExitCode, SendError
from tests.auth_support import make_certificate


def with_auth(path: Path, auth: str, sender: str | None = None) -> Path:
    """Replace the [auth] section of a conftest campaign (and optionally its [sender] lines)."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"\[auth\]\n(?:.+\n)+", "[auth]\n" + auth.strip() + "\n", text)
    if sender is not None:
        text = re.sub(r'mailbox = ".*"\n', sender + "\n", text)
    path.write_text(text, encoding="utf-8")
    return path


BASE = 'tenant = "contoso.onmicrosoft.com"\nclient_id = "app-1"\n'


def load(make_campaign, auth: str, **kwargs: str) -> Campaign:
    return load_campaign(with_auth(make_campaign(), BASE + auth, **kwargs))


# -- the [auth] section --------------------------------------------------------------------------------


def test_defaults_keep_the_client_secret_in_an_environment_variable(make_campaign) -> None:
    campaign = load(make_campaign, "")
    auth = campaign.settings.auth
    assert (auth.mode, auth.client_secret_env, auth.delegated) == (
        "client_credentials",
        "MAILMERGE_CLIENT_SECRET",
        False,
    )
    assert credential_description(campaign) == "app-only: client secret in $MAILMERGE_CLIENT_SECRET"


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ('client_secret_env = "A"\nclient_secret_file = "s.txt"', "give one credential"),
        ('certificate = "a.pem"\nclient_secret_file = "s.txt"', "give one credential"),
        ('thumbprint = "AB"', "go with certificate"),
        ('mode = "device_code"\nclient_secret_file = "s.txt"', "uses no app credential"),
        ('mode = "auth_code"\ncertificate = "a.pem"', "uses no app credential"),
        ('mode = "device_code"\nscopes = ["Mail.Send", "offline_access"]', "msal asks for them itself"),
        ('mode = "password"', "[auth] mode"),
        ('authority = "http://login.example"', "https"),
    ],
)
def test_contradictory_auth_settings_are_config_errors(make_campaign, auth: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(make_campaign, auth)
    assert expected in str(caught.value)
    assert caught.value.exit_code is ExitCode.CONFIG


def test_delegated_modes_refuse_a_pool_of_mailboxes(make_campaign) -> None:
    with pytest.raises(ConfigError, match="sends only as the user who signed in"):
        load(
            make_campaign,
            'mode = "device_code"',
            sender='mailboxes = ["a@contoso.example", "b@contoso.example"]',
        )


def test_token_cache_folder_campaign_setting_then_environment_then_default(
    make_campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILMERGE_TOKEN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    campaign = load(make_campaign, "")
    assert (
        token_cache_path(campaign)
        == tmp_path / "xdg" / "mailmerge" / "msal-contoso.onmicrosoft.com-app-1.json"
    )
    monkeypatch.setenv("MAILMERGE_TOKEN_CACHE_DIR", str(tmp_path / "env"))
    assert token_cache_path(campaign).parent == tmp_path / "env"
    pinned = load(make_campaign, 'token_cache = "tokens"')
    assert token_cache_path(pinned).parent == pinned.folder / "tokens"


def test_scopes_and_consent_url(make_campaign) -> None:
    campaign = load(make_campaign, 'mode = "device_code"\nscopes = ["Mail.Send", "Mail.ReadBasic"]')
    assert delegated_scopes(campaign) == [
        "https://graph.microsoft.com/Mail.Send",
        "https://graph.microsoft.com/Mail.ReadBasic",
    ]
    assert consent_url(campaign) == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/adminconsent?client_id=app-1"
    )


def test_graph_scope_is_graph_itself_except_in_national_clouds() -> None:
    assert graph_scope("https://graph.microsoft.com/v1.0") == "https://graph.microsoft.com/.default"
    assert graph_scope("https://graph.microsoft.us/v1.0") == "https://graph.microsoft.us/.default"
    # an emulator or a proxy in front of Graph still needs tokens for Graph
    assert graph_scope("https://127.0.0.1:8443/v1.0") == "https://graph.microsoft.com/.default"


# -- credentials ---------------------------------------------------------------------------------------


def test_secret_from_the_environment(make_campaign, monkeypatch: pytest.MonkeyPatch) -> None:
    campaign = load(make_campaign, 'client_secret_env = "MM_SECRET_X"')
    monkeypatch.delenv("MM_SECRET_X", raising=False)
    with pytest.raises(ConfigError, match="MM_SECRET_X is not set") as caught:
        client_secret(campaign)
    assert "export MM_SECRET_X" in str(caught.value)
    monkeypatch.setenv("MM_SECRET_X", "s3cr3t-value")
    assert client_secret(campaign) == "s3cr3t-value"


def test_secret_file_must_be_readable_by_its_owner_only(make_campaign) -> None:
    campaign = load(make_campaign, 'client_secret_file = "secret.txt"')
    secret_file = campaign.folder / "secret.txt"
    secret_file.write_text("s3cr3t-from-file\n", encoding="utf-8")
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        client_secret(campaign)
    text = str(caught.value)
    assert "can be read by other users (mode 0644)" in text and f"chmod 600 {secret_file}" in text
    assert "s3cr3t" not in text
    secret_file.chmod(0o640)
    with pytest.raises(ConfigError, match="mode 0640"):
        client_secret(campaign)
    secret_file.chmod(0o600)
    assert client_secret(campaign) == "s3cr3t-from-file"
    assert credential_description(campaign) == f"app-only: client secret in {secret_file}"


def test_missing_or_empty_secret_file(make_campaign) -> None:
    campaign = load(make_campaign, 'client_secret_file = "secret.txt"')
    with pytest.raises(ConfigError, match="does not exist"):
        client_secret(campaign)
    secret_file = campaign.folder / "secret.txt"
    secret_file.write_text("\n", encoding="utf-8")
    secret_file.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        client_secret(campaign)


def test_certificate_thumbprint_is_computed_and_the_key_checked(make_campaign, tmp_path: Path) -> None:
    campaign = load(make_campaign, 'certificate = "app.pem"')
    path, cert_pem, sha1 = make_certificate(campaign.folder)
    loaded = load_certificate(campaign)
    assert loaded.sha1_thumbprint == sha1
    assert loaded.credential["public_certificate"].encode() == cert_pem.strip()
    assert "PRIVATE KEY" not in repr(loaded)
    path.chmod(0o644)  # an unencrypted key others can read is refused like a secret file
    with pytest.raises(ConfigError, match="can be read by other users"):
        load_certificate(campaign)


def test_certificate_with_passphrase(make_campaign, monkeypatch: pytest.MonkeyPatch) -> None:
    campaign = load(make_campaign, 'certificate = "app.pem"\ncertificate_passphrase_env = "MM_PASS"')
    path, _, _ = make_certificate(campaign.folder, passphrase="correct horse")
    path.chmod(0o644)  # an encrypted key may be readable: the passphrase protects it
    monkeypatch.setenv("MM_PASS", "wrong horse")
    with pytest.raises(ConfigError, match="the passphrase is wrong") as caught:
        load_certificate(campaign)
    assert "horse" not in str(caught.value)
    monkeypatch.setenv("MM_PASS", "correct horse")
    assert load_certificate(campaign).credential["passphrase"] == "correct horse"
    monkeypatch.delenv("MM_PASS")
    with pytest.raises(ConfigError, match="MM_PASS is not set"):
        load_certificate(campaign)


def test_encrypted_key_without_passphrase_setting(make_campaign) -> None:
    campaign = load(make_campaign, 'certificate = "app.pem"')
    make_certificate(campaign.folder, passphrase="pw")
    with pytest.raises(ConfigError, match="the key is encrypted") as caught:
        load_certificate(campaign)
    assert "certificate_passphrase_env" in str(caught.value)


def test_given_thumbprint_must_match_and_a_bare_key_needs_one(make_campaign) -> None:
    campaign = load(make_campaign, 'certificate = "app.pem"\nthumbprint = "00:11"')
    make_certificate(campaign.folder)
    with pytest.raises(ConfigError, match="is not the certificate's"):
        load_certificate(campaign)
    bare = load(make_campaign, 'certificate = "app.pem"')
    make_certificate(bare.folder, with_cert=False)
    with pytest.raises(ConfigError, match="no SHA-1 thumbprint is given"):
        load_certificate(bare)
    thumb = "AB" * 20
    keyed = load(make_campaign, f'certificate = "app.pem"\nthumbprint = "{thumb}"')
    assert load_certificate(keyed).credential["thumbprint"] == thumb.lower()


def test_expired_certificate_is_refused(make_campaign) -> None:
    campaign = load(make_campaign, 'certificate = "app.pem"')
    make_certificate(campaign.folder, days=-1)
    with pytest.raises(ConfigError, match="expired on"):
        load_certificate(campaign)


# -- hints ---------------------------------------------------------------------------------------------


def test_entra_errors_carry_the_fix(make_campaign) -> None:
    campaign = load(make_campaign, "")
    wrong = auth_error(
        {
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace",
        },
        action="getting a token",
        campaign=campaign,
    )
    assert (
        wrong.hint == "the client secret is wrong or expired: create a new one under Certificates & secrets"
    )
    assert str(wrong).startswith("getting a token failed: AADSTS7000215: Invalid client secret provided.")
    assert "Trace" not in str(wrong)
    consent = auth_error({"error": "invalid_grant", "error_codes": [65001]}, action="x", campaign=campaign)
    assert consent.hint is not None and consent_url(campaign) in consent.hint
    for code, words in ((700016, "client_id"), (90002, "[auth] tenant"), (7000218, "Allow public client")):
        error = auth_error({"error": "e", "error_codes": [code]}, action="x", campaign=campaign)
        assert words in (error.hint or "")
    assert auth_error({"error": "odd"}, action="x").hint == "check the [auth] section of the campaign"


def test_graph_codes_that_stop_a_mailbox_have_hints() -> None:
    assert graph_hint("ErrorAccessDenied") == (
        "grant the application permission Mail.Send and admin consent, and check the application access "
        "policy for this mailbox"
    )
    assert "delegated permission Mail.Send" in (graph_hint("ErrorAccessDenied", delegated=True) or "")
    assert "Send As" in (stop_reason_hint("ErrorSendAsDenied: not allowed") or "")
    assert "Exchange Online mailbox" in (stop_reason_hint("MailboxNotEnabledForRESTAPI: REST API ...") or "")
    assert stop_reason_hint("SomethingElse: x") is None


def test_a_run_whose_mailboxes_all_stopped_exits_by_cause(make_campaign) -> None:
    campaign = load(make_campaign, "")
    denied = stopped_mailboxes_error(
        {"a@x": "ErrorAccessDenied: Access is denied."}, delegated=False, campaign=campaign
    )
    assert isinstance(denied, AuthError) and denied.exit_code is ExitCode.AUTH
    assert "application access policy" in (denied.hint or "") and "mailmerge resume" in (denied.hint or "")
    missing = stopped_mailboxes_error(
        {"a@x": "MailboxNotEnabledForRESTAPI: no"}, delegated=False, campaign=campaign
    )
    assert isinstance(missing, ConfigError) and missing.exit_code is ExitCode.CONFIG
    other = stopped_mailboxes_error({"a@x": "HTTP403: ?"}, delegated=False, campaign=campaign)
    assert isinstance(other, SendError)


def test_msal_debug_logs_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("msal.token_cache").debug(
        "event=%s",
        '{"data": {"device_code": "DAQABAAE-secret", "code_verifier": "v3r1f13r"}, "scope": ["x"]}',
    )
    logging.getLogger("msal.application").debug("POST client_secret=abc%2Fdef&grant_type=client_credentials")
    assert "DAQABAAE-secret" not in caplog.text and "v3r1f13r" not in caplog.text
    assert "abc%2Fdef" not in caplog.text
    assert '"device_code": "***"' in caplog.text and "grant_type=client_credentials" in caplog.text


class FakeConfidentialApp(msal.ConfidentialClientApplication):
    """msal's app with the token endpoint's answers scripted (no network, no authority lookup)."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:  # deliberately skips msal's __init__
        self.answers = answers
        self.calls = 0

    def acquire_token_for_client(self, scopes: list[str], **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        return self.answers.pop(0)

    def remove_tokens_for_client(self) -> None:
        pass


def test_a_transient_token_endpoint_failure_is_tried_again(make_campaign) -> None:
    campaign = load(make_campaign, "")
    busy = {"error": "temporarily_unavailable", "error_description": "AADSTS90033: try again"}
    app = FakeConfidentialApp([busy, busy, {"access_token": "fresh", "expires_in": 3600}])
    tokens = AppTokens(campaign, app)
    tokens.retry_wait = wait_none()
    assert asyncio.run(tokens.token()) == "fresh" and app.calls == 3
    refused = FakeConfidentialApp([{"error": "invalid_client", "error_codes": [7000215]}, busy])
    tokens = AppTokens(campaign, refused)
    tokens.retry_wait = wait_none()
    with pytest.raises(AuthError, match="invalid_client"):
        asyncio.run(tokens.token())
    assert refused.calls == 1  # a wrong secret is not tried again

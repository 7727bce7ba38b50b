"""``mailmerge auth login/status/logout`` and sign-in through ``run``, against the emulator: what a person
sees, the exit codes, and a scan proving no secret or token leaks into any output or file."""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailmerge import auth, cli
from mailmerge.cli import main
from mailmerge.errors import ExitCode
from mailmerge.sandbox import Profile, Sandbox
from tests.auth_support import MAILBOX, TENANT, RecordingSession, recording_session, write_campaign

SECRET = "Cl13nt~S3cret.value_for-the-scan"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(Profile(token_lifetime_seconds=2)) as sandbox:
        sandbox.add_mailbox(MAILBOX)
        yield sandbox


def invoke(*args: str) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with rich's line wrapping and panel borders undone."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_device_code_login_in_a_terminal_then_silent_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-dc", public_client=True)
    campaign = write_campaign(tmp_path / "c", sandbox, mode="device_code", client_id="app-dc")
    login = subprocess.Popen(
        [sys.executable, "-m", "mailmerge", "auth", "login", str(campaign)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert login.stdout is not None
    seen: list[str] = []
    code = None
    deadline = time.monotonic() + 30
    while code is None and time.monotonic() < deadline:
        line = login.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.fullmatch(r"\W*([A-Z0-9]{8,12})\W*", line.strip())
        code = found.group(1) if found else None
    assert code, "".join(seen)
    assert "/devicelogin" in "".join(seen)
    sandbox.approve_device_code(code, MAILBOX)
    rest, _ = login.communicate(timeout=30)
    assert login.returncode == 0, "".join(seen) + rest
    assert f"Signed in as {MAILBOX}" in rest

    status = invoke("auth", "status", campaign)
    assert status.exit_code == 0, status.output
    for words in ("device_code", MAILBOX, "held: runs sign in silently", "plain file", "no keyring in tests"):
        assert words in flat(status.output)

    run = invoke("run", campaign)
    assert run.exit_code == 0, run.output
    assert len(sandbox.delivered()) == 5

    logout = invoke("auth", "logout", campaign)
    assert logout.exit_code == 0 and f"Removed the tokens of {MAILBOX}" in logout.output
    assert "nobody signed in" in flat(invoke("auth", "status", campaign).output)


def test_a_run_nobody_signed_in_for_stops_before_sending(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-dc", public_client=True)
    campaign = write_campaign(tmp_path / "c", sandbox, mode="device_code", client_id="app-dc")
    run = invoke("run", campaign)
    assert run.exit_code == ExitCode.AUTH, run.output
    assert "nobody is signed in" in flat(run.output) and "mailmerge auth login" in flat(run.output)
    assert sandbox.delivered() == []
    status = invoke("status", campaign, "--json")
    assert '"pending": 5' in status.output  # nobody was claimed, so nobody is left 'unknown'


def test_delegated_run_with_a_pool_is_a_config_error(sandbox: Sandbox, tmp_path: Path) -> None:
    campaign = write_campaign(
        tmp_path / "c",
        sandbox,
        mode="device_code",
        sender='mailboxes = ["a@contoso.example", "b@contoso.example"]',
    )
    result = invoke("auth", "login", campaign)
    assert result.exit_code == ExitCode.CONFIG
    assert "sends only as the user who signed in" in flat(result.output)


def test_missing_permission_stops_the_run_with_the_fix(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-1", secret=SECRET, application_permissions=())
    monkeypatch.setenv("MM_SECRET", SECRET)
    campaign = write_campaign(tmp_path / "c", sandbox, auth='client_secret_env = "MM_SECRET"')
    result = invoke("run", campaign)
    assert result.exit_code == ExitCode.AUTH, result.output
    text = flat(result.output)
    assert "ErrorAccessDenied" in text
    assert "grant the application permission Mail.Send and admin consent" in text
    assert "mailmerge resume" in text


def test_a_mailbox_taken_out_of_the_pool_is_shown_with_its_fix(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.add_mailbox("denied@contoso.example", send_as_denied=True)
    sandbox.register_app(tenant=TENANT, client_id="app-1", secret=SECRET)
    monkeypatch.setenv("MM_SECRET", SECRET)
    campaign = write_campaign(
        tmp_path / "c",
        sandbox,
        auth='client_secret_env = "MM_SECRET"',
        sender=f'mailboxes = ["denied@contoso.example", "{MAILBOX}"]',  # the first claims first
        rows=12,
    )
    result = invoke("run", campaign)
    text = flat(result.output)
    assert "mailbox denied@contoso.example was taken out of the pool: ErrorSendAsDenied" in text, (
        result.output
    )
    assert "hint: the sender may not send as this address" in text
    assert len(sandbox.delivered()) == 12  # the other mailbox sent the refused ones


def test_wrong_secret_is_exit_4_with_the_fix_and_without_the_secret(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox.register_app(tenant=TENANT, client_id="app-1", secret="the-registered-one")
    monkeypatch.setenv("MM_SECRET", SECRET)
    campaign = write_campaign(tmp_path / "c", sandbox, auth='client_secret_env = "MM_SECRET"')
    for command in (["auth", "login"], ["run"]):
        result = invoke(*command, campaign)
        assert result.exit_code == ExitCode.AUTH, result.output
        assert "create a new one under Certificates & secrets" in flat(result.output)
        assert SECRET not in result.output and "the-registered-one" not in result.output


def test_no_secret_or_token_appears_anywhere_but_the_owner_only_cache(
    sandbox: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    private_cache: Path,
) -> None:
    RecordingSession.issued, RecordingSession.grants = [], []
    monkeypatch.setattr(auth, "http_session", recording_session)
    caplog.set_level(logging.DEBUG)  # msal, urllib3 and everything else, at their most talkative
    sandbox.register_app(tenant=TENANT, client_id="app-1", secret=SECRET)
    sandbox.register_app(tenant=TENANT, client_id="app-dc", public_client=True)
    monkeypatch.setenv("MM_SECRET", SECRET)
    app_only = write_campaign(tmp_path / "app", sandbox, auth='client_secret_env = "MM_SECRET"', rows=6)
    delegated = write_campaign(tmp_path / "me", sandbox, mode="device_code", client_id="app-dc", rows=6)
    outputs = []
    shown = cli._show_device_code

    def show_and_approve(prompt: Any) -> None:  # the user at the browser, a moment after the code shows
        shown(prompt)
        threading.Timer(0.2, sandbox.approve_device_code, args=(prompt.user_code, MAILBOX)).start()

    monkeypatch.setattr(cli, "_show_device_code", show_and_approve)
    for campaign in (app_only, delegated):
        outputs.append(invoke("auth", "login", campaign))
        outputs.append(invoke("run", campaign))
        outputs.append(invoke("resume", campaign))  # a second run: tokens from the cache or refreshed
        outputs.append(invoke("auth", "status", campaign))
        outputs.append(invoke("status", campaign, "--json"))
        for fmt in ("csv", "json"):
            outputs.append(invoke("report", campaign, "--format", fmt, "-o", campaign.with_suffix(f".{fmt}")))
    assert [o.exit_code for o in outputs] == [0] * len(outputs), [o.output for o in outputs]
    assert len(sandbox.delivered()) == 12

    secrets = {SECRET, *RecordingSession.issued}
    kinds = set(RecordingSession.grants)
    assert {"client_credentials", "refresh_token"} <= kinds and len(secrets) > 6
    texts = {"cli output": "\n".join(o.output for o in outputs), "logs": caplog.text}
    files = [p for p in tmp_path.rglob("*") if p.is_file() and private_cache not in p.parents]
    assert any(p.suffix == ".db" for p in files) and any(p.suffix == ".json" for p in files)
    for path in files:
        texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text and secret[-24:] not in text, f"a credential leaked into {where}"

    cache_files = list(private_cache.iterdir())
    assert cache_files and stat.S_IMODE(private_cache.stat().st_mode) == 0o700
    for path in cache_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

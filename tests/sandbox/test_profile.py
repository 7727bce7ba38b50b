"""Profiles: defaults, validation, TOML (including the example in docs/sandbox.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailmerge.sandbox import Every, Faults, Latency, Limits, Profile

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sandbox.md"


def test_defaults_are_the_documented_service_limits() -> None:
    limits = Profile().limits
    assert (limits.messages_per_minute, limits.concurrent_requests, limits.requests_per_10_minutes) == (
        30,
        4,
        10_000,
    )
    assert (limits.recipients_per_24h, limits.max_recipients_per_message) == (10_000, 500)
    assert (
        limits.max_request_bytes == 4 * 1024 * 1024 and limits.upload_bytes_per_5_minutes == 150 * 1024 * 1024
    )
    assert Profile().faults == Faults() and Profile().latency == Latency.fixed(0.0)
    assert all(v is None for v in vars(Limits.unlimited()).values())


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError, match="retry_after_style"):
        Profile(retry_after_style="sometimes")
    with pytest.raises(ValueError, match="probability"):
        Faults(server_error=1.5)
    with pytest.raises(ValueError, match="Every"):
        Every(0)


def test_docs_example_loads(tmp_path: Path) -> None:
    text = DOCS.read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/sandbox.md must show a TOML profile"
    (tmp_path / "app.pem").write_bytes(b"")
    path = tmp_path / "profile.toml"
    path.write_text(block.group(1).replace('certificate_file = "app-cert.pem"\n', ""))
    profile = Profile.from_toml(path)
    assert profile.limits.messages_per_minute == 30 and profile.limits.recipients_per_24h is None
    assert profile.faults.seed == 42 and profile.faults.server_error == 0.02
    assert profile.faults.accepted_but_error == Every(50)
    assert profile.latency == Latency("uniform", low=0.01, high=0.2)
    assert profile.apps[0].client_id and profile.mailboxes[0].address == "news@contoso.example"
    assert profile.bad_recipients and profile.undeliverable and profile.soft_undeliverable


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[limits]\nmessages_per_hour = 3\n")
    with pytest.raises(ValueError, match="messages_per_hour"):
        Profile.from_toml(path)


def test_profile_directory_is_applied(tmp_path: Path) -> None:
    from mailmerge.sandbox import Sandbox

    path = tmp_path / "p.toml"
    path.write_text(
        'bad_recipients = ["x@y.example"]\n[[apps]]\ntenant = "t.example"\nclient_id = "c"\n'
        'secret = "s"\n[[mailboxes]]\naddress = "m@t.example"\ncan_send = false\n'
    )
    sb = Sandbox(Profile.from_toml(path))
    state = sb._state
    assert state.directory.app("c") is not None and state.directory.mailbox("m@t.example").can_send is False
    assert "x@y.example" in state.bad_recipients

"""Shared fixtures: a campaign folder built from text, so each test states exactly what it sends."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from mailmerge import tokencache

CAMPAIGN_TEMPLATE = """
[campaign]
name = "{name}"

[sender]
{sender}
save_to_sent_items = {save}

[recipients]
source = "people.csv"
name = "name"

[message]
subject = "{subject}"
html = "body.html.j2"
text = "body.txt.j2"

[auth]
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret_env = "MM_TEST_SECRET"

[limits]
{limits}
"""

MakeCampaign = Callable[..., Path]


@pytest.fixture
def make_campaign(tmp_path: Path) -> MakeCampaign:
    """Write a campaign folder (TOML, CSV, templates) and return the campaign file's path."""

    def make(
        rows: list[dict[str, str]] | None = None,
        *,
        name: str = "test",
        mailboxes: tuple[str, ...] = ("news@contoso.example",),
        subject: str = "Hello {{ first_name }}",
        html: str = "<p>Hi {{ first_name }} from {{ city }}</p>",
        text: str = "Hi {{ first_name }} from {{ city }}",
        limits: str = "messages_per_minute = 100000",
        save_to_sent_items: bool = True,
        csv_text: str | None = None,
    ) -> Path:
        if rows is None:
            rows = [
                {
                    "email": f"person{i}@fabrikam.example",
                    "name": f"Person {i}",
                    "first_name": f"P{i}",
                    "city": "Oslo",
                }
                for i in range(1, 6)
            ]
        if csv_text is None:
            header = list(rows[0])
            lines = [",".join(header)] + [",".join(row[h] for h in header) for row in rows]
            csv_text = "\n".join(lines) + "\n"
        (tmp_path / "people.csv").write_text(csv_text, encoding="utf-8")
        (tmp_path / "body.html.j2").write_text(html, encoding="utf-8")
        (tmp_path / "body.txt.j2").write_text(text, encoding="utf-8")
        sender = (
            f'mailbox = "{mailboxes[0]}"'
            if len(mailboxes) == 1
            else "mailboxes = [" + ", ".join(f'"{m}"' for m in mailboxes) + "]"
        )
        path = tmp_path / f"{name}.toml"
        path.write_text(
            textwrap.dedent(
                CAMPAIGN_TEMPLATE.format(
                    name=name,
                    sender=sender,
                    subject=subject,
                    limits=limits,
                    save=str(save_to_sent_items).lower(),
                )
            ),
            encoding="utf-8",
        )
        return path

    return make


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test keeps its msal token cache to itself, as a plain file in a folder of its own:
    never the user's ~/.cache, never this machine's keyring."""
    folder = tmp_path / "token-cache"
    monkeypatch.setenv("MAILMERGE_TOKEN_CACHE_DIR", str(folder))

    def no_keyring(path: Path) -> object:
        raise ImportError("no keyring in tests")

    monkeypatch.setattr(tokencache, "_encrypted_persistence", no_keyring)
    return folder


def point_at(campaign_file: Path, sandbox: object, **graph: object) -> None:
    """Rewrite a campaign file so its authority and Graph URLs are the emulator's (as for a national
    cloud: only endpoints change)."""
    extra = "".join(f"{key} = {value!r}\n" for key, value in graph.items())
    text = campaign_file.read_text(encoding="utf-8")
    text = text.replace(
        "[auth]\n",
        f'[auth]\nauthority = "{sandbox.authority_host}"\nca_file = "{sandbox.ca_file}"\n',  # type: ignore[attr-defined]
    )
    text += f'\n[graph]\nbase_url = "{sandbox.graph_base_url}"\nca_file = "{sandbox.ca_file}"\n{extra}'  # type: ignore[attr-defined]
    campaign_file.write_text(text, encoding="utf-8")

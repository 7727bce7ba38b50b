"""Helpers for the content tests: a campaign folder written from Python values, and its rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mailmerge.campaign import Campaign, load_campaign
from mailmerge.recipients import Recipient, RecipientSource, RowProblem
from mailmerge.render import RenderedMessage, Renderer
from mailmerge.store import Status
from mailmerge.validate import RowCheck, check_rows

HEADER_ROW = "email,name,first_name,city\n"
PEOPLE = (
    HEADER_ROW
    + "anna@fabrikam.example,Anna Schmidt,Anna,Oslo\njose@fabrikam.example,José García,José,Sevilla\n"
)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_campaign(
    folder: Path,
    *,
    data: str | bytes | None = PEOPLE,
    source: str = "people.csv",
    recipients: dict[str, Any] | None = None,
    message: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    html: str | None = "<p>Hi {{ first_name }} from {{ city }}</p>",
    text: str | None = "Hi {{ first_name }} from {{ city }}",
    files: dict[str, str | bytes] | None = None,
    mailbox: str = "news@contoso.example",
) -> Path:
    """Write a campaign folder and return the campaign file's path.

    ``message`` keys override the defaults (html = body.html.j2, text = body.txt.j2); pass
    ``html=None``/``text=None`` to leave a body out.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if data is not None:
        target = folder / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
        else:
            target.write_text(data, encoding="utf-8", newline="")
    all_files: dict[str, str | bytes] = {}
    if html is not None:
        all_files["body.html.j2"] = html
    if text is not None:
        all_files["body.txt.j2"] = text
    all_files.update(files or {})
    for name, content in all_files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    message_keys: dict[str, Any] = {"subject": "Hello {{ first_name }}"}
    if html is not None:
        message_keys["html"] = "body.html.j2"
    if text is not None:
        message_keys["text"] = "body.txt.j2"
    message_keys.update(message or {})
    sections = {
        "campaign": {"name": "content"},
        "sender": {"mailbox": mailbox},
        "recipients": {"source": source, "name": "name", **(recipients or {})},
        "message": message_keys,
        "auth": {"tenant": "contoso.onmicrosoft.com", "client_id": "11111111-2222-3333-4444-555555555555"},
        "limits": {"messages_per_minute": 100000, **(limits or {})},
    }
    lines = []
    for section, keys in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in keys.items() if value is not None)
        lines.append("")
    path = folder / "campaign.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def entries(path: Path) -> list[Recipient | RowProblem]:
    return [entry for chunk in RecipientSource(load_campaign(path)).chunks() for entry in chunk]


def checks(path: Path, *, render: bool = True) -> list[RowCheck]:
    return [check for chunk in check_rows(load_campaign(path), render=render) for check in chunk]


def by_status(path: Path) -> dict[int, Status]:
    return {check.row: check.status for check in checks(path)}


def render_rows(path: Path) -> dict[int, RenderedMessage | RowProblem]:
    """Every readable row rendered in full, by row number."""
    campaign: Campaign = load_campaign(path)
    renderer = Renderer(campaign)
    return {
        entry.row: (renderer.render(entry) if isinstance(entry, Recipient) else entry)
        for chunk in RecipientSource(campaign).chunks()
        for entry in chunk
    }

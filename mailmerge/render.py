"""Rendering one message per recipient from the campaign's Jinja templates.

Templates run in Jinja's sandbox with ``StrictUndefined``: a variable missing for a row is an error
for that row (named with the template and line), never an empty string in a sent message. HTML
templates autoescape recipient data, so a name like ``<script>`` arrives as text.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from mailmerge.campaign import Campaign
from mailmerge.errors import ConfigError
from mailmerge.recipients import Recipient, RowProblem, template_context
from mailmerge.send.graph import Address, Attachment

SUBJECT_TEMPLATE_NAME = "[message] subject"


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """The personalised parts of one message."""

    subject: str
    html: str | None
    text: str | None
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[Attachment, ...] = ()


class Renderer:
    """Compiled templates of one campaign, ready to render any number of rows."""

    def __init__(self, campaign: Campaign) -> None:
        message = campaign.settings.message
        paths = [campaign.resolve(p) for p in (message.html, message.text) if p]
        folders = list(dict.fromkeys(str(p.parent) for p in paths)) or [str(campaign.folder)]
        loader = FileSystemLoader(folders)
        self._html_env = SandboxedEnvironment(loader=loader, undefined=StrictUndefined, autoescape=True)
        self._text_env = SandboxedEnvironment(loader=loader, undefined=StrictUndefined, autoescape=False)
        self._subject = self._compile_string(message.subject)
        self._html = (
            self._compile_file(self._html_env, campaign.resolve(message.html), "html")
            if message.html
            else None
        )
        self._text = (
            self._compile_file(self._text_env, campaign.resolve(message.text), "text")
            if message.text
            else None
        )

    def _compile_string(self, source: str) -> Template:
        try:
            return self._text_env.from_string(source)
        except TemplateSyntaxError as exc:
            raise ConfigError(
                f"the subject is not a valid template: {exc.message}", context=SUBJECT_TEMPLATE_NAME
            ) from exc

    @staticmethod
    def _compile_file(env: SandboxedEnvironment, path: Path, key: str) -> Template:
        if not path.is_file():
            raise ConfigError(
                f"template not found: {path}",
                context=f"[message] {key}",
                hint="the path is relative to the campaign file",
            )
        try:
            return env.get_template(path.name)
        except TemplateSyntaxError as exc:
            where = exc.filename or str(path)
            raise ConfigError(
                f"{where}, line {exc.lineno}: {exc.message}", context=f"[message] {key}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 text", context=f"[message] {key}") from exc

    def render(self, recipient: Recipient) -> RenderedMessage | RowProblem:
        """Render one recipient's message, or say precisely why it cannot be rendered."""
        context = template_context(recipient.fields)
        parts: dict[str, str | None] = {}
        for part, template in (("subject", self._subject), ("html", self._html), ("text", self._text)):
            if template is None:
                parts[part] = None
                continue
            try:
                parts[part] = template.render(context)
            except UndefinedError as exc:
                return RowProblem(
                    recipient.row, None, f"{part} template{_line_of(exc, template)}: {exc.message}"
                )
            except SecurityError as exc:
                return RowProblem(recipient.row, None, f"{part} template: unsafe operation refused: {exc}")
            except TemplateError as exc:
                return RowProblem(recipient.row, None, f"{part} template{_line_of(exc, template)}: {exc}")
        subject = (parts["subject"] or "").strip()
        if "\n" in subject or "\r" in subject:
            return RowProblem(
                recipient.row, None, "the subject would contain a line break (header injection refused)"
            )
        if not subject:
            return RowProblem(recipient.row, None, "the subject renders empty")
        return RenderedMessage(subject=subject, html=parts["html"], text=parts["text"])


def _line_of(exc: Exception, template: Template) -> str:
    """The template line Jinja was on when ``exc`` was raised, from its rewritten traceback."""
    filename = template.filename or "<template>"
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == filename and frame.lineno:
            return f", line {frame.lineno}"
    return ""

"""Rendering one message per recipient from the campaign's templates.

Templates run in Jinja's sandbox with ``StrictUndefined``: a variable missing for a row is an error
for that row (named with the template and line), never an empty string in a sent message. HTML
templates autoescape recipient data, so a name like ``<script>`` arrives as text. The body comes
from an HTML template or a Markdown one (rendered to HTML); ``<style>`` blocks are inlined for email
clients, and a text version is derived when no text template is given. Every header a row fills in
(subject, cc, bcc, reply-to, custom ``X-`` headers, attachment names) is refused for that row if it
would contain a line break: no header injection.

:meth:`Renderer.check` does everything :meth:`Renderer.render` does except read attachment contents
and derive the text version, so pre-flight can go through a million rows quickly; both find the
same problems.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from jinja2 import Template, TemplateError, TemplateNotFound, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from mailmerge.attachments import (
    AttachmentFiles,
    FileRef,
    is_pattern,
    link_inline_images,
)
from mailmerge.campaign import Campaign
from mailmerge.errors import ConfigError
from mailmerge.recipients import Recipient, RowProblem, check_address, header_breaker, template_context
from mailmerge.send.graph import MAX_REQUEST_BYTES, UPLOAD_SESSION_BYTES, Address, Attachment
from mailmerge.templating import Kind, environment, html_to_text, inline_css, markdown_to_html

SUBJECT_TEMPLATE_NAME = "[message] subject"
#: Exchange refuses a message to more than 500 recipients (To + Cc + Bcc).
MAX_RECIPIENTS = 500
#: What the headers and MIME structure of a message add to its size, roughly.
HEADER_OVERHEAD = 4 * 1024


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


@dataclass(frozen=True, slots=True)
class MessageCheck:
    """What pre-flight learns about one message without building it in full."""

    size: int
    upload_session: bool  # too big for one plain request, or an attachment of 3 MB or more


@dataclass(frozen=True, slots=True)
class _Draft:
    subject: str
    html: str | None
    text: str | None
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    headers: tuple[tuple[str, str], ...]
    files: tuple[FileRef, ...]
    size: int


class _Refused(Exception):
    """A row-level problem found while rendering; becomes a :class:`RowProblem`."""


class Renderer:
    """Compiled templates of one campaign, ready to render any number of rows."""

    def __init__(self, campaign: Campaign) -> None:
        message = campaign.settings.message
        self._folder = campaign.folder
        self._locale = message.locale
        self._envs: dict[tuple[Kind, Path], SandboxedEnvironment] = {}
        self._inline_css = message.inline_css
        self._deliverability = campaign.settings.recipients.check_deliverability
        self._max_mb = campaign.settings.limits.max_message_mb
        self._max_bytes = int(self._max_mb * 1024 * 1024)
        self._files = AttachmentFiles(campaign.folder, allow_outside=message.allow_outside)
        self._subject = self._compile_string("text", message.subject, SUBJECT_TEMPLATE_NAME)
        self._html = self._compile_file("html", campaign, message.html, "html")
        self._markdown = self._compile_file("markdown", campaign, message.markdown, "markdown")
        self._markdown_text = self._compile_file("text", campaign, message.markdown, "markdown")
        self._text = self._compile_file("text", campaign, message.text, "text")
        self._addresses = {
            field: [self._compile_string("text", t, f"[message] {field}") for t in templates]
            for field, templates in message.address_templates.items()
        }
        self._headers = [
            (name, self._compile_string("text", value, f"[message] headers.{name}"))
            for name, value in message.headers.items()
        ]
        self._attachments = [
            (
                source,
                self._compile_string(
                    "path" if is_pattern(source) else "text", source, "[message] attachments"
                ),
                is_pattern(source),
            )
            for source in message.attachments
        ]

    # -- compiling ---------------------------------------------------------------------------------

    def _env(self, kind: Kind, folder: Path) -> SandboxedEnvironment:
        if (kind, folder) not in self._envs:
            self._envs[kind, folder] = environment(kind, [folder, self._folder], self._locale)
        return self._envs[kind, folder]

    def _compile_string(self, kind: Kind, source: str, where: str) -> Template:
        try:
            return self._env(kind, self._folder).from_string(source)
        except TemplateSyntaxError as exc:
            raise ConfigError(f"not a valid template: {exc.message}", context=where) from exc

    def _compile_file(
        self, kind: Kind, campaign: Campaign, relative: str | None, key: str
    ) -> Template | None:
        if not relative:
            return None
        path = campaign.resolve(relative)
        if not path.is_file():
            raise ConfigError(
                f"template not found: {path}",
                context=f"[message] {key}",
                hint="the path is relative to the campaign file",
            )
        try:
            return self._env(kind, path.parent).get_template(path.name)
        except TemplateSyntaxError as exc:
            where = exc.filename or str(path)
            raise ConfigError(
                f"{where}, line {exc.lineno}: {exc.message}", context=f"[message] {key}"
            ) from exc
        except TemplateNotFound as exc:
            raise ConfigError(f"template not found: {exc}", context=f"[message] {key}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 text", context=f"[message] {key}") from exc

    # -- rendering ---------------------------------------------------------------------------------

    def render(self, recipient: Recipient, *, derive_text: bool = True) -> RenderedMessage | RowProblem:
        """Render one recipient's message, or say precisely why it cannot be rendered.

        Without a text template the text part is derived from the HTML, for previews and ``.eml``
        files; the sending engine, whose Graph message carries the HTML alone, skips that work.
        """
        try:
            draft = self._draft(recipient)
            text = draft.text
            if text is None and draft.html is not None and derive_text:
                text = html_to_text(draft.html)
            attachments = tuple(
                Attachment(f.name, f.content_type, self._files.read(f), f.content_id) for f in draft.files
            )
        except (_Refused, ValueError) as exc:
            return RowProblem(recipient.row, None, str(exc), email=recipient.email, fields=recipient.fields)
        return RenderedMessage(
            subject=draft.subject,
            html=draft.html,
            text=text,
            cc=draft.cc,
            bcc=draft.bcc,
            reply_to=draft.reply_to,
            headers=draft.headers,
            attachments=attachments,
        )

    def check(self, recipient: Recipient) -> MessageCheck | RowProblem:
        """Everything :meth:`render` checks, without reading attachments or deriving the text."""
        try:
            draft = self._draft(recipient)
        except (_Refused, ValueError) as exc:
            return RowProblem(recipient.row, None, str(exc), email=recipient.email, fields=recipient.fields)
        large_file = any(f.size >= UPLOAD_SESSION_BYTES for f in draft.files)
        return MessageCheck(size=draft.size, upload_session=large_file or draft.size >= MAX_REQUEST_BYTES)

    def _draft(self, recipient: Recipient) -> _Draft:
        context = template_context(recipient.fields)
        subject = self._run("subject", self._subject, context).strip()
        _header_safe("the subject", subject)
        if not subject:
            raise _Refused("the subject renders empty")
        html = self._run("html", self._html, context) if self._html else None
        text = self._run("text", self._text, context) if self._text else None
        if self._markdown and self._markdown_text:
            html = markdown_to_html(self._run("markdown", self._markdown, context))
            if text is None:
                text = self._run("markdown", self._markdown_text, context)
        if html is not None and self._inline_css:
            html = inline_css(html)
        files: list[FileRef] = []
        for source, template, pattern in self._attachments:
            rendered = self._run(f"attachment {source!r}", template, context).strip()
            try:
                files.extend(self._files.resolve(rendered, pattern=pattern))
            except ValueError as exc:
                raise _Refused(f"attachment {source!r}: {exc}") from None
        if html is not None:
            try:
                html, files = link_inline_images(html, files)
            except ValueError as exc:
                raise _Refused(f"html: {exc}") from None
        cc, bcc, reply_to = (self._address_list(field, context) for field in ("cc", "bcc", "reply_to"))
        if 1 + len(cc) + len(bcc) > MAX_RECIPIENTS:
            raise _Refused(f"the message would have {1 + len(cc) + len(bcc)} recipients; Exchange allows 500")
        headers = []
        for name, template in self._headers:
            value = self._run(f"header {name}", template, context).strip()
            _header_safe(f"header {name}", value)
            if value:  # an empty value leaves the header out (Graph refuses empty ones)
                headers.append((name, value))
        size = (
            HEADER_OVERHEAD
            + len(subject.encode())
            + sum(_wire(part) for part in (html, text))
            + sum(f.wire_size for f in files)
        )
        if size > self._max_bytes:
            raise _Refused(
                f"the message would be about {size / 2**20:.2f} MB, over the limit of "
                f"{self._max_mb:g} MB ([limits] max_message_mb)"
            )
        return _Draft(subject, html, text, cc, bcc, reply_to, tuple(headers), tuple(files), size)

    def _address_list(self, field: str, context: dict[str, Any]) -> tuple[Address, ...]:
        addresses: list[Address] = []
        for template in self._addresses[field]:
            value = self._run(field, template, context).strip()
            _header_safe(field, value)
            if not value:
                continue
            for name, address in getaddresses([value.replace(";", ",")]):
                if not address:
                    raise _Refused(f"{field}: cannot read addresses from {value!r}")
                try:
                    normalized = check_address(address, deliverability=self._deliverability)
                except ValueError as exc:
                    raise _Refused(f"{field}: {exc}") from None
                addresses.append(Address(normalized, name or None))
        return tuple(addresses)

    @staticmethod
    def _run(part: str, template: Template | None, context: dict[str, Any]) -> str:
        assert template is not None
        try:
            return template.render(context)
        except UndefinedError as exc:
            raise _Refused(f"{part} template{_line_of(exc, template)}: {exc.message}") from None
        except SecurityError as exc:
            raise _Refused(f"{part} template: unsafe operation refused: {exc}") from None
        except TemplateNotFound as exc:
            raise _Refused(f"{part} template: no template {exc.name!r} in the templates folder") from None
        except TemplateError as exc:
            raise _Refused(f"{part} template{_line_of(exc, template)}: {exc}") from None
        except Exception as exc:  # a template can divide by zero too; that is the row's problem
            raise _Refused(
                f"{part} template{_line_of(exc, template)}: {exc.__class__.__name__}: {exc}"
            ) from None


def _header_safe(what: str, value: str) -> None:
    if header_breaker(value):
        raise _Refused(f"{what} would contain a line break (header injection refused)")


def _wire(part: str | None) -> int:
    """A body's size in the message, as base64 (the worst case for UTF-8 text)."""
    if not part:
        return 0
    encoded = 4 * math.ceil(len(part.encode()) / 3)
    return encoded + 2 * math.ceil(encoded / 76)


def _line_of(exc: Exception, template: Template) -> str:
    """The template line Jinja was on when ``exc`` was raised, from its rewritten traceback."""
    filename = template.filename or "<template>"
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename == filename and frame.lineno:
            return f", line {frame.lineno}"
    return ""

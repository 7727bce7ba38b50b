"""The template machinery: sandboxed Jinja environments, the filters people need, Markdown,
CSS inlining for email clients and the text version of an HTML body.

Four environments share one set of filters and differ only in how recipient data is escaped:

* ``html`` autoescapes (a name like ``<script>`` arrives as text);
* ``text`` does not (it is plain text, and headers are checked separately for line breaks);
* ``markdown`` backslash-escapes Markdown punctuation, so a value like ``[win](http://evil)`` is
  shown as written rather than becoming a link; the result is rendered to HTML by markdown-it-py;
* ``path`` escapes glob characters, so a value like ``*`` cannot turn an attachment path into a
  pattern that attaches every file.

Every environment uses ``StrictUndefined``: a missing value is an error for that row, never "Dear ,".
"""

from __future__ import annotations

import glob
import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, Literal

import css_inline
from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import FileSystemLoader, StrictUndefined, TemplateRuntimeError
from jinja2.sandbox import SandboxedEnvironment
from markdown_it import MarkdownIt
from markupsafe import Markup

Kind = Literal["html", "text", "markdown", "path"]
_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_STYLE_TAG = re.compile(r"<style\b", re.IGNORECASE)


def environment(kind: Kind, search_path: list[Path], locale: str) -> SandboxedEnvironment:
    """A sandboxed environment of one kind whose ``{% include %}``/``{% extends %}`` look in
    ``search_path`` (Jinja refuses names that climb out of it with ``..``)."""
    finalize = {"markdown": _markdown_finalize, "path": _path_finalize}.get(kind)
    env = SandboxedEnvironment(
        loader=FileSystemLoader([str(p) for p in dict.fromkeys(search_path)]),
        undefined=StrictUndefined,
        autoescape=kind == "html",
        finalize=finalize,
        keep_trailing_newline=kind in {"text", "markdown"},
    )
    env.filters.update(
        {
            "date": _date_filter(locale),
            "datetime": _datetime_filter(locale),
            "currency": _currency_filter(locale),
            "number": _number_filter(locale),
        }
    )
    return env


def _markdown_finalize(value: Any) -> Any:
    if isinstance(value, Markup):  # the template author said | safe
        return value
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", str(value))


def _path_finalize(value: Any) -> Any:
    return glob.escape(str(value))


# -- filters ---------------------------------------------------------------------------------------


def _as_datetime(value: Any, parse: str | None, filter_name: str) -> datetime | date:
    if isinstance(value, datetime | date):
        return value
    text = str(value).strip()
    try:
        if parse:
            return datetime.strptime(text, parse)
        return date.fromisoformat(text) if len(text) <= 10 else datetime.fromisoformat(text)
    except ValueError:
        expected = f"in the format {parse!r}" if parse else "written as YYYY-MM-DD (or YYYY-MM-DD HH:MM)"
        raise TemplateRuntimeError(
            f"{filter_name}: {text!r} is not a date {expected}; "
            f'give the format it is in, e.g. | {filter_name}("long", parse="%d/%m/%Y")'
        ) from None


def _date_filter(default_locale: str) -> Any:
    def date_filter(
        value: Any, format: str = "medium", parse: str | None = None, locale: str | None = None
    ) -> str:
        """``{{ due | date("d MMMM y") }}`` → ``5 March 2024`` (CLDR patterns, or short/medium/long/full)."""
        moment = _as_datetime(value, parse, "date")
        day = moment.date() if isinstance(moment, datetime) else moment
        return babel_dates.format_date(day, format=format, locale=_locale(locale, default_locale))

    return date_filter


def _datetime_filter(default_locale: str) -> Any:
    def datetime_filter(
        value: Any, format: str = "medium", parse: str | None = None, locale: str | None = None
    ) -> str:
        """``{{ starts | datetime("short") }}`` → ``3/5/24, 2:30 PM`` (no time-zone conversion)."""
        moment = _as_datetime(value, parse, "datetime")
        if not isinstance(moment, datetime):
            moment = datetime(moment.year, moment.month, moment.day)
        return babel_dates.format_datetime(moment, format=format, locale=_locale(locale, default_locale))

    return datetime_filter


def _as_decimal(value: Any, filter_name: str) -> Decimal:
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        raise TemplateRuntimeError(
            f"{filter_name}: {value!r} is not a number (write it with a dot for decimals: 1234.50)"
        ) from None


def _currency_filter(default_locale: str) -> Any:
    def currency_filter(value: Any, currency: str = "EUR", locale: str | None = None) -> str:
        """``{{ total | currency("EUR") }}`` → ``€1,234.50`` (``1.234,50 €`` with locale nl_NL)."""
        return babel_numbers.format_currency(
            _as_decimal(value, "currency"), currency, locale=_locale(locale, default_locale)
        )

    return currency_filter


def _number_filter(default_locale: str) -> Any:
    def number_filter(value: Any, decimals: int | None = None, locale: str | None = None) -> str:
        """``{{ points | number }}`` → ``12,345``; ``| number(2)`` → ``12,345.00``."""
        amount = _as_decimal(value, "number")
        pattern = None if decimals is None else "#,##0" + ("." + "0" * decimals if decimals else "")
        return babel_numbers.format_decimal(amount, format=pattern, locale=_locale(locale, default_locale))

    return number_filter


def _locale(given: str | None, default: str) -> str:
    if not given:
        return default
    try:
        return str(Locale.parse(str(given).replace("-", "_")))
    except (ValueError, UnknownLocaleError):
        raise TemplateRuntimeError(f"unknown locale {given!r}") from None


# -- HTML for email ----------------------------------------------------------------------------------


@cache
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": True, "typographer": False}).enable(["table", "strikethrough"])


def markdown_to_html(source: str) -> str:
    """Markdown (CommonMark plus tables and strikethrough) as an HTML document."""
    body = _markdown().render(source)
    return f'<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"></head>\n<body>\n{body}</body>\n</html>\n'


@cache
def _inliner() -> css_inline.CSSInliner:
    # @media rules cannot be inlined: they stay in a <style> block for the clients that read one.
    return css_inline.CSSInliner(keep_style_tags=False, keep_at_rules=True, load_remote_stylesheets=False)


def inline_css(html: str) -> str:
    """The CSS of ``<style>`` blocks moved into ``style`` attributes, as most email clients need.

    :class:`ValueError` when the CSS cannot be applied."""
    if not _STYLE_TAG.search(html):
        return html
    try:
        return _inliner().inline(html)
    except css_inline.InlineError as exc:
        raise ValueError(f"the CSS cannot be inlined: {exc}") from exc


def html_to_text(html: str) -> str:
    """A readable plain-text version of an HTML body: layout kept, links shown as ``[text](url)``.

    :class:`ValueError` when the HTML cannot be read at all."""
    if not html.strip():
        return ""
    try:
        return get_text(html, ParserConfig(display_links=True)).strip() + "\n"
    except Exception as exc:  # inscriptis parses with lxml, which has many ways to object
        raise ValueError(f"no text version can be derived from the HTML: {exc}") from exc

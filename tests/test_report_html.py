"""The HTML report: what a person reading it sees, and that recipient data never becomes markup."""

from __future__ import annotations

import io
import re
import tomllib
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailmerge.campaign import load_campaign
from mailmerge.cli import main
from mailmerge.clock import ManualClock
from mailmerge.report import ReportOptions, write_report
from mailmerge.report_chart import bucket_seconds, sends_chart
from mailmerge.store import Status
from tests.conftest import MakeCampaign
from tests.test_report_support import MAILBOXES, build_campaign, new_store

REPO = Path(__file__).resolve().parent.parent


class Page(HTMLParser):
    """The parts of the report a test looks at: tags seen, the recipient table, visible text."""

    def __init__(self, markup: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._in_table = False
        self._cell: list[str] | None = None
        self.feed(markup)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "table" and attributes.get("class") == "recipients":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())

    @property
    def recipient_rows(self) -> list[list[str]]:
        return [row for row in self.rows if row]


def render(tmp_path: Path, **options: object) -> tuple[str, int]:
    markup, count, _ = render_with_counts(tmp_path, **options)
    return markup, count


def render_with_counts(tmp_path: Path, **options: object) -> tuple[str, int, dict[Status, int]]:
    store, clock = new_store(tmp_path / "state.db")
    campaign_id = build_campaign(store, clock)
    out = io.StringIO()
    count = write_report(
        store,
        campaign_id,
        "Spring <news>",
        "html",
        out,
        ReportOptions(campaign_file="spring.toml", **options),
    )
    counts = store.counts(campaign_id)
    store.close()
    return out.getvalue(), count, counts


def test_html_report_summarises_charts_and_explains_problems(tmp_path: Path) -> None:
    markup, count = render(tmp_path)
    page = Page(markup)
    assert count == 40 == len(page.recipient_rows)
    visible = page.visible
    assert "Spring <news>" in visible  # the title, escaped in the markup, reads as written
    assert "Accepted for delivery" in visible and "Bounced" in visible
    for status in Status:
        assert status.value in visible
    # one bar segment per mailbox and time bucket in the inline SVG chart, with a legend
    assert len([t for t, a in page.tags if t == "rect"]) >= 2
    assert all(mailbox in visible for mailbox in MAILBOXES)
    # problems grouped by cause, each with the fix a person should make
    assert "Check the address in the spreadsheet" in visible
    assert "mailmerge retry-failed spring.toml --code ErrorInvalidRecipients" in visible
    assert "mailmerge resume spring.toml" in visible  # for the unknown ones
    assert "The address does not exist" in visible  # the 5.1.1 bounce
    assert "soft bounce" in visible


def test_recipient_data_is_escaped_and_the_page_loads_nothing(tmp_path: Path) -> None:
    markup, _ = render(tmp_path, with_columns=True)
    page = Page(markup)
    assert [t for t, _ in page.tags if t in ("script", "iframe", "object", "embed", "img", "link")] == []
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    assert not re.search(r"(src|href)\s*=|@import|url\(", markup, re.IGNORECASE)
    assert "<script>alert" not in markup and "<b>bold</b>" not in markup and "<b>p</b>" not in markup
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in markup
    cells = [cell for row in page.recipient_rows for cell in row]
    assert "<script>alert('x')</script>" in cells  # shown as text, exactly
    assert 'Zoë & "Ünïcødé" <b>bold</b>' in cells


def test_large_tables_are_capped_with_a_note(tmp_path: Path) -> None:
    markup, count = render(tmp_path, html_row_limit=7)
    page = Page(markup)
    assert count == 7 == len(page.recipient_rows)
    assert "shows the first 7 of 40 recipients" in page.visible
    assert "--format xlsx" in page.visible


def test_status_filter_narrows_the_table_not_the_summary(tmp_path: Path) -> None:
    markup, count, counts = render_with_counts(tmp_path, statuses=frozenset({Status.FAILED}))
    page = Page(markup)
    assert count == len(page.recipient_rows) == counts[Status.FAILED] > 0
    assert all("failed" in row for row in page.recipient_rows)
    assert "Recipients 40" in page.visible  # the summary figure still counts everyone


def test_report_command_writes_html_for_a_campaign_that_sent_nothing(
    tmp_path: Path, make_campaign: MakeCampaign
) -> None:
    campaign_file = make_campaign()
    store, _ = new_store(Path(load_campaign(campaign_file).database_url.removeprefix("sqlite:///")))
    store.campaign_id("test")
    store.close()
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(campaign_file), "--format", "html", "-o", str(out)])
    assert result.exit_code == 0, result.output
    visible = Page(out.read_text(encoding="utf-8")).visible
    assert "Nothing has been sent yet" in visible and "No recipients" in visible


def test_the_template_ships_inside_the_package() -> None:
    template = resources.files("mailmerge") / "templates" / "report.html.j2"
    assert template.is_file()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "templates/*.j2" in pyproject["tool"]["setuptools"]["package-data"]["mailmerge"]


@pytest.mark.parametrize(
    ("span", "size"),
    [
        (0, 60),
        (50 * 60, 60),
        (3 * 3600, 300),
        (2 * 86_400, 3600),
        (90 * 86_400, 86_400 * 7),
        (3 * 365 * 86_400, 86_400 * 7 * 3),
    ],
)
def test_chart_buckets_keep_the_bar_count_readable(span: int, size: int) -> None:
    assert bucket_seconds(1_000_000.0, 1_000_000.0 + span) == size


def test_chart_escapes_mailbox_names() -> None:
    start = int(ManualClock().time() // 60)
    svg = str(sends_chart([("<x>@y", start, 3), ("a@b", start + 2, 5)], 60, {"<x>@y": "#000", "a@b": "#111"}))
    assert "<x>@y" not in svg and "&lt;x&gt;@y" in svg
    assert svg.count("<rect") == 2

"""How the CLI shows pre-flight, dry runs and previews (rich output only; no decisions here)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from mailmerge.campaign import Campaign
from mailmerge.dryrun import DryRun
from mailmerge.preview import Preview, describe
from mailmerge.runner import Preflight


def print_preflight(
    console: Console, campaign: Campaign, result: Preflight, *, problems_file: Path | None = None
) -> None:
    """The summary table, the notes, and the first problems of a pre-flight."""
    table = Table(title=f"{campaign.name}: pre-flight of {campaign.settings.recipients.source}")
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("read", str(result.rows + result.filtered_out))
    if campaign.settings.recipients.where:
        table.add_row("left out by the filter", str(result.filtered_out))
    table.add_row("ready to send", str(result.ready), style="green")
    table.add_row("duplicates (first row wins)", str(result.duplicates))
    table.add_row("suppressed", str(result.suppressed))
    table.add_row("invalid", str(result.problem_count), style="red" if result.problem_count else None)
    console.print(table)
    notes = [f"read as {result.description}"] if result.description else []
    notes.extend(result.warnings)
    if result.ready:
        notes.append(
            f"largest message about {result.largest_message / 2**20:.2f} MB "
            f"(limit {campaign.settings.limits.max_message_mb:g} MB)"
        )
    if result.upload_session:
        notes.append(
            f"{result.upload_session} messages are over 4 MB or carry an attachment of 3 MB or more: "
            "Graph takes those as a draft with upload sessions, not as one sendMail request"
        )
    for note in notes:
        console.print(f"[cyan]note:[/] {escape(note)}")
    if result.skipped:
        console.print("[yellow]not sent (by design):[/]")
        for check in result.skipped:
            console.print(f"  row {check.row}: {escape(check.email)} — {escape(check.reason or '')}")
        shown = len(result.skipped)
        if result.duplicates + result.suppressed > shown:
            console.print(f"  ... and {result.duplicates + result.suppressed - shown} more")
    if result.problems:
        console.print("[red]problems:[/]")
        for problem in result.problems:
            console.print(f"  {escape(str(problem))}")
        if result.problem_count > len(result.problems):
            console.print(f"  ... and {result.problem_count - len(result.problems)} more")
    if problems_file is not None:
        console.print(f"Every row that will not be sent, with why: {problems_file}")


def print_dry_run(console: Console, result: DryRun) -> None:
    counts = ", ".join(f"{count} {status.value}" for status, count in sorted(result.counts.items()))
    console.print(
        Panel(
            f"{result.written} messages written as .eml to {result.folder}\n"
            f"manifest: {result.folder / 'manifest.csv'} ({counts or 'no rows'})\nnothing was sent",
            title="dry run",
            expand=False,
        )
    )


def print_preview(console: Console, shown: Preview, html_file: Path, eml_file: Path) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for name, value in describe(shown):
        table.add_row(escape(name), escape(value))
    console.print(table)
    console.print(Panel(escape(shown.message.text or "(no text version)"), title="text", expand=False))
    console.print(f"HTML saved to {html_file} (open it in a browser); the whole message: {eml_file}")

"""The ``mailmerge`` command: a thin layer over the library.

Each command loads the campaign, calls one library function and renders the result; library
errors become a short panel with the fix and a distinct exit code, never a traceback (``--debug``
shows one).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from mailmerge.auth import token_source
from mailmerge.campaign import Campaign, load_campaign
from mailmerge.clock import SystemClock
from mailmerge.errors import ExitCode, MailmergeError
from mailmerge.progress import ProgressView
from mailmerge.report import FORMATS, write_report
from mailmerge.runner import (
    build_engine,
    campaign_id_of,
    import_recipients,
    open_store,
    require_preflight,
)
from mailmerge.send.engine import RunSummary
from mailmerge.send.transport import AiohttpTransport
from mailmerge.store import Status, Store

console = Console()
errors = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(command: F) -> F:
    """Render :class:`MailmergeError` as a panel with its hint and exit with its code."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return command(*args, **kwargs)
        except MailmergeError as exc:
            if debug:
                errors.print_exception()
            body = f"[bold]{exc.context + ': ' if exc.context else ''}[/bold]{exc.message}"
            problems = getattr(exc, "problems", [])
            if problems:
                body += "\n" + "\n".join(f"  • {problem}" for problem in problems)
            if exc.hint:
                body += f"\n\n[cyan]hint:[/cyan] {exc.hint}"
            errors.print(
                Panel(body, title=f"error ({exc.__class__.__name__})", border_style="red", expand=False),
                markup=True,
                highlight=False,
            )
            sys.exit(int(exc.exit_code))

    return wrapper  # type: ignore[return-value]


@click.group()
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="mailmerge")
def main(debug: bool) -> None:
    """Bulk, personalised email through Microsoft Graph: exactly once, throttled, resumable."""


campaign_argument = click.argument("campaign_file", type=click.Path(dir_okay=False, path_type=Path))
sandbox_option = click.option(
    "--sandbox", is_flag=True, help="Send to the embedded Graph emulator instead of Microsoft (a rehearsal)."
)


def _print_counts(counts: dict[Status, int], title: str) -> None:
    table = Table(title=title)
    table.add_column("status")
    table.add_column("recipients", justify="right")
    for status, count in counts.items():
        table.add_row(status.value, str(count))
    table.add_row("total", str(sum(counts.values())), style="bold")
    console.print(table)


def _plan(campaign: Campaign, counts: dict[Status, int]) -> None:
    limits = campaign.settings.limits
    to_send = counts[Status.PENDING] + counts[Status.UNKNOWN]
    mailboxes = campaign.mailboxes
    rate = (limits.rate_limit or 0) * len(mailboxes)
    lines = [f"{to_send} recipients to send from {len(mailboxes)} mailbox(es): {', '.join(mailboxes)}"]
    if rate:
        lines.append(f"at most {rate:g} messages/minute → about {to_send / rate:.1f} minutes of sending")
    if limits.daily_limit:
        per_day = limits.daily_limit * len(mailboxes)
        days = to_send / per_day
        if days > 1:
            lines.append(
                f"[yellow]the daily limit of {limits.daily_limit} recipients per mailbox binds: "
                f"about {days:.1f} days; the run pauses each mailbox until its 24-hour window allows more[/]"
            )
    if not campaign.settings.sender.save_to_sent_items:
        lines.append(
            "[yellow]save_to_sent_items = false: a message whose answer is lost cannot be looked up; such "
            "recipients stay 'unknown' until you decide with resume --assume-sent/--assume-unsent[/]"
        )
    console.print(Panel("\n".join(lines), title=f"plan: {campaign.name}", expand=False))


def _exit_code(summary: RunSummary) -> ExitCode:
    if summary.interrupted:
        return ExitCode.INTERRUPTED
    if summary.counts[Status.FAILED] or summary.counts[Status.UNKNOWN] or summary.counts[Status.PENDING]:
        return ExitCode.SOME_FAILED
    return ExitCode.OK


async def _send_with_progress(campaign: Campaign, store: Store, secret: str | None) -> RunSummary:
    clock = SystemClock()
    tokens = token_source(campaign, secret=secret)
    transport = AiohttpTransport(ca_file=campaign.settings.graph.ca_file)
    engine = build_engine(campaign, store, transport=transport, tokens=tokens, clock=clock)
    counts = store.counts(engine.campaign_id)
    to_send = counts[Status.PENDING] + counts[Status.UNKNOWN] + counts[Status.SENDING]
    view = ProgressView(console, engine.stats, to_send=to_send, clock=clock)
    finished = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    presses = 0

    def on_interrupt() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            errors.print("[yellow]stopping: finishing the requests in flight (Ctrl-C again to quit now)[/]")
            engine.request_stop()
        elif main_task is not None:
            main_task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_interrupt)
    shower = asyncio.create_task(view.show(finished))
    try:
        return await engine.run()
    finally:
        finished.set()
        await shower
        await transport.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _send_and_report(campaign: Campaign, store: Store, secret: str | None) -> None:
    campaign_id = campaign_id_of(campaign, store)
    before = store.counts(campaign_id)
    waiting = before[Status.PENDING] + before[Status.UNKNOWN] + before[Status.SENDING]
    if not waiting:
        console.print(
            f"All {before[Status.SENT]} recipients are already sent; nothing to do."
            if not before[Status.FAILED]
            else f"Nothing to send: {before[Status.SENT]} sent, {before[Status.FAILED]} failed "
            f"(`mailmerge retry-failed {campaign.path}` puts the failed ones back)."
        )
        sys.exit(int(ExitCode.SOME_FAILED if before[Status.FAILED] else ExitCode.OK))
    _plan(campaign, before)
    try:
        summary = asyncio.run(_send_with_progress(campaign, store, secret))
    except (asyncio.CancelledError, KeyboardInterrupt):
        errors.print(
            "[red]stopped at once.[/] Requests in flight may have gone out; "
            f"`mailmerge resume {campaign.path}` checks them before sending anything again."
        )
        sys.exit(int(ExitCode.INTERRUPTED))
    _print_counts(summary.counts, f"{campaign.name}: where things stand")
    for mailbox, reason in summary.stopped_mailboxes.items():
        errors.print(f"[red]mailbox {mailbox} was taken out of the pool:[/] {reason}")
    code = _exit_code(summary)
    if code is not ExitCode.OK:
        console.print(
            f"Resume with `mailmerge resume {campaign.path}`"
            + (" (failed recipients: `mailmerge retry-failed`)" if summary.counts[Status.FAILED] else "")
        )
    sys.exit(int(code))


@main.command()
@campaign_argument
@sandbox_option
@friendly_errors
def run(campaign_file: Path, sandbox: bool) -> None:
    """Check every row, record the recipients, and send the campaign."""
    campaign = load_campaign(campaign_file)
    require_preflight(campaign)
    with ExitStack() as stack:
        secret = None
        if sandbox:
            campaign, secret = _enter_sandbox(stack, campaign)
        store = stack.enter_context(open_store(campaign))
        new, total = import_recipients(campaign, store)
        console.print(f"{total} rows read, {new} new recipients recorded in {store.url}")
        _send_and_report(campaign, store, secret)


@main.command()
@campaign_argument
@sandbox_option
@click.option("--assume-sent", "assume", flag_value="sent", help="Settle every 'unknown' recipient as sent.")
@click.option("--assume-unsent", "assume", flag_value="unsent", help="Send every 'unknown' recipient again.")
@friendly_errors
def resume(campaign_file: Path, sandbox: bool, assume: str | None) -> None:
    """Continue an interrupted campaign from its database: nobody is sent twice or skipped."""
    campaign = load_campaign(campaign_file)
    with ExitStack() as stack:
        secret = None
        if sandbox:
            campaign, secret = _enter_sandbox(stack, campaign)
        store = stack.enter_context(open_store(campaign))
        campaign_id = campaign_id_of(campaign, store)
        if assume:
            target = Status.SENT if assume == "sent" else Status.PENDING
            moved = store.resolve_unknown(campaign_id, target, reason=f"user chose --assume-{assume}")
            console.print(
                f"{moved} unknown recipients settled as {'sent' if assume == 'sent' else 'unsent'}."
            )
        _send_and_report(campaign, store, secret)


def _enter_sandbox(stack: ExitStack, campaign: Campaign) -> tuple[Campaign, str]:
    from mailmerge.rehearsal import rehearse

    rehearsal = stack.enter_context(rehearse(campaign))
    console.print(
        f"[cyan]sandbox:[/] Graph emulator at {rehearsal.sandbox.graph_base_url}; "
        f"delivered messages go to {rehearsal.outbox}"
    )
    return rehearsal.campaign, rehearsal.secret


@main.command()
@campaign_argument
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@friendly_errors
def status(campaign_file: Path, as_json: bool) -> None:
    """Show how many recipients stand in each status."""
    campaign = load_campaign(campaign_file)
    with open_store(campaign) as store:
        counts = store.counts(campaign_id_of(campaign, store))
    if as_json:
        click.echo(json.dumps({"campaign": campaign.name, "counts": {s.value: n for s, n in counts.items()}}))
    else:
        _print_counts(counts, campaign.name)


@main.command()
@campaign_argument
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default stdout)."
)
@friendly_errors
def report(campaign_file: Path, fmt: str, output: Path | None) -> None:
    """Export one row per recipient: row, key, address, status, attempts, times, error."""
    campaign = load_campaign(campaign_file)
    with open_store(campaign) as store:
        campaign_id = campaign_id_of(campaign, store)
        if output is None:
            write_report(store, campaign_id, campaign.name, fmt, sys.stdout)
            return
        with output.open("w", encoding="utf-8", newline="") as out:
            count = write_report(store, campaign_id, campaign.name, fmt, out)
    errors.print(f"{count} recipients written to {output}")


@main.command(name="retry-failed")
@campaign_argument
@click.option("--code", help="Only recipients that failed with this Graph error code.")
@friendly_errors
def retry_failed(campaign_file: Path, code: str | None) -> None:
    """Put failed recipients back to pending after you fixed the cause."""
    campaign = load_campaign(campaign_file)
    with open_store(campaign) as store:
        moved = store.retry_failed(campaign_id_of(campaign, store), code=code)
    console.print(
        f"{moved} failed recipients are pending again; send them with `mailmerge resume {campaign_file}`."
    )


def _add_sandbox_commands() -> None:
    from mailmerge.sandbox.cli import sandbox

    main.add_command(sandbox)


_add_sandbox_commands()

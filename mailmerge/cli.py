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
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mailmerge import signin
from mailmerge.auth import stop_reason_hint, stopped_mailboxes_error, token_source
from mailmerge.bounces import BounceHarvest, export_suppressions, parse_since, read_bounces
from mailmerge.campaign import Campaign, load_campaign
from mailmerge.checkview import print_dry_run, print_preflight, print_preview
from mailmerge.dryrun import dry_run as write_dry_run
from mailmerge.errors import ConfigError, ExitCode, MailmergeError, SendError, StoreError
from mailmerge.overview import CampaignStatus, campaign_status, find_databases, list_campaigns
from mailmerge.preview import Preview, save_preview, send_test
from mailmerge.preview import preview as preview_message
from mailmerge.progress import ProgressView
from mailmerge.report import FORMATS, ReportOptions, open_output, write_report
from mailmerge.runner import (
    build_engine,
    campaign_id_of,
    import_recipients,
    open_store,
    preflight,
    require_preflight,
)
from mailmerge.send.engine import RunSummary
from mailmerge.send.graph import OutgoingMessage
from mailmerge.send.transport import AiohttpTransport
from mailmerge.store import Status, Store
from mailmerge.validate import ProblemsFile

console = Console()
errors = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(command: F) -> F:
    """Render :class:`MailmergeError` as its message, problems and hint, and exit with its code.

    Printed as plain, unwrapped lines (never markup: messages quote user data) so that a path or a
    row number can be copied or searched for whatever the terminal's width.
    """

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return command(*args, **kwargs)
        except MailmergeError as exc:
            if debug:
                errors.print_exception()
            lines = Text("error: ", style="bold red")
            lines.append(f"{exc.context}: " if exc.context else "", style="bold")
            lines.append(exc.message)
            for problem in getattr(exc, "problems", []):
                lines.append(f"\n  • {problem}")
            if exc.hint:
                lines.append("\nhint: ", style="cyan")
                lines.append(exc.hint)
            errors.print(lines, soft_wrap=True, highlight=False)
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
        if count or status is Status.SENT:
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
        # The first minute's allowance goes at once; the rest at the rate.
        minutes = max(0.0, to_send - rate) / rate
        lines.append(f"at most {rate:g} messages/minute → about {minutes:.1f} minutes of sending")
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
            "recipients stay 'unknown' until you decide with resume --assume-sent/--assume-unsent, and a "
            "throttled (429) message is taken at Graph's word as not sent[/]"
        )
    console.print(Panel("\n".join(lines), title=f"plan: {campaign.name}", expand=False))


def _exit_code(summary: RunSummary) -> ExitCode:
    if summary.interrupted:
        return ExitCode.INTERRUPTED
    if summary.counts[Status.FAILED] or summary.counts[Status.UNKNOWN] or summary.counts[Status.PENDING]:
        return ExitCode.SOME_FAILED
    return ExitCode.OK


async def _send_with_progress(campaign: Campaign, store: Store, secret: str | None) -> RunSummary:
    tokens = token_source(campaign, secret=secret)
    await tokens.token()  # sign-in problems surface now, before any recipient is claimed
    transport = AiohttpTransport(ca_file=campaign.settings.graph.ca_file)
    engine = build_engine(campaign, store, transport=transport, tokens=tokens)
    counts = store.counts(engine.campaign_id)
    to_send = counts[Status.PENDING] + counts[Status.UNKNOWN] + counts[Status.SENDING]
    view = ProgressView(console, engine.stats, to_send=to_send, clock=store.clock)
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
    except SendError as exc:
        if engine.stopped and not engine.active:
            delegated = tokens.delegated
            raise stopped_mailboxes_error(engine.stopped, delegated=delegated, campaign=campaign) from exc
        raise
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
        errors.print(f"[red]mailbox {mailbox} was taken out of the pool:[/] {escape(reason)}")
        hint = stop_reason_hint(reason, delegated=campaign.settings.auth.delegated)
        if hint:
            errors.print(f"  [cyan]hint:[/] {escape(hint)}")
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
@click.option("--dry-run", is_flag=True, help="Write every message as .eml plus a manifest; send nothing.")
@click.option(
    "--dry-run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for --dry-run (default: <campaign>.dryrun beside the campaign file).",
)
@click.option(
    "--skip-invalid", is_flag=True, help="Send the valid rows; record rows that cannot be sent as 'invalid'."
)
@friendly_errors
def run(
    campaign_file: Path, sandbox: bool, dry_run: bool, dry_run_dir: Path | None, skip_invalid: bool
) -> None:
    """Check every row, record the recipients, and send the campaign."""
    campaign = load_campaign(campaign_file)
    checked = require_preflight(campaign, skip_invalid=skip_invalid)
    if not checked.ok:
        print_preflight(errors, campaign, checked)
        errors.print(f"[yellow]--skip-invalid: {checked.problem_count} rows are recorded as invalid[/]")
    if dry_run:
        folder = dry_run_dir or campaign.path.with_name(f"{campaign.path.stem}.dryrun")
        print_dry_run(console, write_dry_run(campaign, folder))
        return
    with ExitStack() as stack:
        secret = None
        if sandbox:
            campaign, secret = _enter_sandbox(stack, campaign)
        store = stack.enter_context(open_store(campaign))
        new, total = import_recipients(campaign, store, skip_invalid=skip_invalid)
        console.print(f"{total} rows read, {new} new recipients recorded in {store.url}")
        _send_and_report(campaign, store, secret)


@main.command()
@campaign_argument
@click.option(
    "--problems",
    "problems_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every row that will not be sent, with why, to this CSV file.",
)
@friendly_errors
def validate(campaign_file: Path, problems_file: Path | None) -> None:
    """Check every row as run would (render, addresses, attachments, sizes, duplicates); send nothing."""
    campaign = load_campaign(campaign_file)
    with ExitStack() as stack:
        sink = stack.enter_context(ProblemsFile(problems_file)) if problems_file else None
        result = preflight(campaign, on_row=sink)
    print_preflight(console, campaign, result, problems_file=problems_file)
    sys.exit(int(ExitCode.OK if result.ok else ExitCode.INPUT))


@main.command()
@campaign_argument
@click.option("--row", type=int, help="The spreadsheet row to show (the header is row 1).")
@click.option("--email", help="The recipient to show, by address.")
@click.option("--send-test-to", "send_to", help="Also send this rendering to ADDRESS, marked [TEST].")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the saved HTML and .eml (default: <campaign>.preview beside the campaign file).",
)
@sandbox_option
@friendly_errors
def preview(
    campaign_file: Path,
    row: int | None,
    email: str | None,
    send_to: str | None,
    out: Path | None,
    sandbox: bool,
) -> None:
    """Show one recipient's message as it will go out, and optionally send a test copy."""
    if row is not None and email:
        raise ConfigError("give --row or --email, not both")
    campaign = load_campaign(campaign_file)
    shown = preview_message(campaign, row=row, email=email)
    folder = out or campaign.path.with_name(f"{campaign.path.stem}.preview")
    print_preview(console, shown, *save_preview(campaign, shown, folder))
    if send_to:
        with ExitStack() as stack:
            secret = None
            if sandbox:
                campaign, secret = _enter_sandbox(stack, campaign)
            sent = asyncio.run(_send_test(campaign, shown, send_to, secret))
        console.print(f"Test message sent to {sent.to_address} from {shown.sender} (tag {sent.tag}).")


async def _send_test(campaign: Campaign, shown: Preview, to: str, secret: str | None) -> OutgoingMessage:
    transport = AiohttpTransport(ca_file=campaign.settings.graph.ca_file)
    try:
        tokens = token_source(campaign, secret=secret)
        return await send_test(campaign, shown, to, transport=transport, tokens=tokens)
    finally:
        await transport.close()


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


def _enter_sandbox(stack: ExitStack, campaign: Campaign) -> tuple[Campaign, str | None]:
    from mailmerge.rehearsal import rehearse

    rehearsal = stack.enter_context(rehearse(campaign))
    console.print(
        f"[cyan]sandbox:[/] Graph emulator at {rehearsal.sandbox.graph_base_url}; "
        f"delivered messages go to {rehearsal.outbox}"
    )
    for note in rehearsal.notes:
        console.print(f"[cyan]sandbox:[/] {escape(note)}")
    return rehearsal.campaign, rehearsal.secret


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def _print_status(state: CampaignStatus) -> None:
    _print_counts(state.counts, f"{state.campaign}: where things stand")
    for item in state.mailboxes:
        per = ", ".join(f"{item.counts[s]:,} {s.value}" for s in Status if item.counts[s])
        if item.left_24h is None:
            quota = f"{item.used_24h:,} recipients in the last 24 h (no daily limit)"
        else:
            used = f"{item.used_24h:,} of {item.daily_limit:,}"
            quota = f"{used} recipients used in the last 24 h, {item.left_24h:,} left"
            if item.frees_at:
                quota += f" (more from {_when(item.frees_at)})"
        console.print(
            f"[bold]{escape(item.mailbox)}[/]: {per or 'nothing attempted yet'}; {quota}", highlight=False
        )
    lines = []
    if state.retries_waiting:
        lines.append(
            f"{state.retries_waiting:,} retries waiting; the next is due {_when(state.next_retry_at)}"
        )
    unknown = state.counts[Status.UNKNOWN]
    if unknown and state.reconciles:
        lines.append(
            f"{unknown:,} unknown, settled by looking in Sent Items ({state.unknown_waiting:,} wait for "
            f"their check, the next {_when(state.next_check_at)}); `mailmerge resume` does it"
        )
    elif unknown:
        lines.append(f"{unknown:,} unknown wait for your decision: resume --assume-sent or --assume-unsent")
    if state.remaining:
        lines.append(
            f"{state.remaining:,} to send; estimated finish {_when(state.finish_at)} ({state.finish_basis})"
        )
    else:
        lines.append("nothing left to send")
    console.print("\n".join(lines), highlight=False)


@main.command()
@campaign_argument
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@friendly_errors
def status(campaign_file: Path, as_json: bool) -> None:
    """Show counts per status and mailbox, daily quota, retries waiting and the estimated finish."""
    campaign = load_campaign(campaign_file)
    with open_store(campaign) as store:
        state = campaign_status(campaign, store)
    if as_json:
        click.echo(json.dumps(state.to_json(), ensure_ascii=False))
    else:
        _print_status(state)


@main.command(name="list")
@click.argument("database", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@friendly_errors
def list_command(database: str | None, as_json: bool) -> None:
    """Show every campaign in a state database (a .db file or a SQLAlchemy URL) with its progress.

    Without DATABASE, every mailmerge .db file in the current folder.
    """
    databases = [database] if database else find_databases(Path.cwd())
    if not databases:
        raise StoreError(
            "no mailmerge database in this folder",
            hint="give one: `mailmerge list path/to/campaign.db` (or a SQLAlchemy URL)",
        )
    found = {db: list_campaigns(db) for db in databases}
    if as_json:
        click.echo(
            json.dumps(
                [{"database": db, "campaigns": [c.to_json() for c in found[db]]} for db in databases],
                ensure_ascii=False,
            )
        )
        return
    for db, campaigns in found.items():
        table = Table(title=escape(db))
        for column in ("campaign", "created", "recipients", "sent", "bounced", "failed", "to do", "done"):
            table.add_column(column, justify="left" if column in ("campaign", "created") else "right")
        for item in campaigns:
            table.add_row(
                escape(item.name),
                _when(item.created_at),
                f"{item.total:,}",
                *(f"{item.counts[s]:,}" for s in (Status.SENT, Status.BOUNCED, Status.FAILED)),
                f"{item.outstanding:,}",
                f"{100 * item.done_share:.0f}%",
            )
        console.print(table)


@main.command()
@campaign_argument
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="csv", show_default=True)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default stdout)."
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="Only recipients in this status (repeatable); summaries still cover everyone.",
)
@click.option(
    "--with-columns", is_flag=True, help="Add the original spreadsheet columns, to merge the report back."
)
@friendly_errors
def report(
    campaign_file: Path, fmt: str, output: Path | None, statuses: tuple[str, ...], with_columns: bool
) -> None:
    """Export one row per recipient: row, key, address, status, attempts, times, error, bounce, tag."""
    campaign = load_campaign(campaign_file)
    options = ReportOptions(
        statuses=frozenset(Status(s) for s in statuses) or None,
        with_columns=with_columns,
        campaign_file=str(campaign_file),
    )
    with open_store(campaign) as store:
        campaign_id = campaign_id_of(campaign, store)
        if output is None:
            if fmt == "xlsx" and sys.stdout.isatty():
                raise ConfigError(
                    "an Excel report is a binary file", hint="write it to a file: -o report.xlsx"
                )
            out = sys.stdout.buffer if fmt == "xlsx" else sys.stdout
            write_report(store, campaign_id, campaign.name, fmt, out, options)
            return
        with open_output(output, fmt) as out:
            count = write_report(store, campaign_id, campaign.name, fmt, out, options)
    errors.print(f"{count} recipients written to {output}")


async def _read_bounces(
    campaign: Campaign, store: Store, secret: str | None, since: float | None
) -> BounceHarvest:
    tokens = token_source(campaign, secret=secret)
    transport = AiohttpTransport(ca_file=campaign.settings.graph.ca_file)
    try:
        return await read_bounces(campaign, store, transport=transport, tokens=tokens, since=since)
    finally:
        await transport.close()


def _print_bounces(harvest: BounceHarvest, exported: int | None, export: Path | None) -> None:
    console.print(
        f"Read {harvest.messages_read:,} messages in the Inbox of {len(harvest.mailboxes)} mailbox(es) "
        f"since {_when(harvest.since)}: {harvest.reports:,} non-delivery reports.",
        highlight=False,
    )
    console.print(
        f"Recorded {harvest.hard:,} hard bounces (now 'bounced') and {harvest.soft:,} soft bounces "
        f"(still 'sent'); {harvest.unchanged:,} were already recorded.",
        highlight=False,
    )
    if not harvest.sent_items_readable:
        errors.print("[yellow]Sent Items could not be read: reports were matched by address only[/]")
    for note in harvest.not_sent:
        errors.print(f"[yellow]skipped:[/] {escape(note)}")
    if harvest.unmatched_count:
        table = Table(title=f"{harvest.unmatched_count} report(s) matched no sent recipient of this campaign")
        for column in ("received", "mailbox", "addresses", "why"):
            table.add_column(column)
        for item in harvest.unmatched:
            table.add_row(
                _when(item.received_at),
                escape(item.mailbox),
                escape(", ".join(item.addresses)),
                escape(item.reason),
            )
        console.print(table)
    if export is not None:
        console.print(f"{exported:,} bounced addresses written to {escape(str(export))} (a suppression list)")


@main.command()
@campaign_argument
@click.option(
    "--since",
    help="Read reports received since this time: a date or time (UTC), or an age like 7d or 12h. "
    "Default: when the campaign started.",
)
@sandbox_option
@click.option(
    "--export-suppressions",
    "export",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the bounced addresses to this file (.csv, or .txt: one per line) for the next campaign.",
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@friendly_errors
def bounces(
    campaign_file: Path, since: str | None, sandbox: bool, export: Path | None, as_json: bool
) -> None:
    """Read bounce reports from the sending mailboxes' Inboxes; mark bounced recipients (needs Mail.Read)."""
    campaign = load_campaign(campaign_file)
    start = parse_since(since, time.time()) if since else None
    with ExitStack() as stack:
        secret = None
        if sandbox:
            campaign, secret = _enter_sandbox(stack, campaign)
        store = stack.enter_context(open_store(campaign))
        harvest = asyncio.run(_read_bounces(campaign, store, secret, start))
        exported = export_suppressions(store, campaign_id_of(campaign, store), export) if export else None
    if as_json:
        click.echo(json.dumps({**harvest.to_json(), "exported": exported}, ensure_ascii=False))
    else:
        _print_bounces(harvest, exported, export)


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


@main.group()
def auth() -> None:
    """Sign in to Microsoft Entra ID, see how a campaign signs in, sign out."""


def _show_device_code(prompt: signin.DeviceCodePrompt) -> None:
    console.print(
        Panel(
            f"Open [bold]{escape(prompt.verification_uri)}[/] in a browser and enter the code\n\n"
            f"    [bold cyan]{escape(prompt.user_code)}[/]\n\n"
            f"The code expires in {prompt.expires_in // 60} minutes.",
            title="sign in",
            expand=False,
        )
    )
    console.print("Waiting for you to sign in...")


def _show_auth_url(url: str) -> None:
    console.print("Opening the sign-in page in your browser. If none opens, open this address:")
    click.echo(url)  # unwrapped, so it can be copied whole


@auth.command(name="login")
@campaign_argument
@friendly_errors
def auth_login(campaign_file: Path) -> None:
    """Sign in once (device code or browser), or check the app's credential (app-only)."""
    campaign = load_campaign(campaign_file)
    done = signin.login(campaign, show_device_code=_show_device_code, show_auth_url=_show_auth_url)
    until = f"; token valid until {_local_time(done.expires_at)}" if done.expires_at else ""
    if done.account:
        console.print(f"[green]Signed in as {done.account}[/]{until}. Runs now refresh the token silently.")
    else:
        console.print(f"[green]App-only sign-in works for {campaign.settings.auth.client_id}[/]{until}.")


def _local_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


@auth.command(name="status")
@campaign_argument
@friendly_errors
def auth_status(campaign_file: Path) -> None:
    """Show the sign-in flow, the account or app, token expiry and where tokens are kept."""
    state = signin.status(load_campaign(campaign_file))
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")  # paths are shown whole, never cut with an ellipsis
    table.add_row("flow", f"{state.mode} ({state.credential})")
    table.add_row("authority", state.authority)
    table.add_row("app (client id)", state.client_id)
    if state.mode != "client_credentials":
        who = state.account or "[yellow]nobody signed in[/] (run `mailmerge auth login`)"
        if state.other_accounts:
            who += f"; also cached: {', '.join(state.other_accounts)}"
        table.add_row("account", who)
        table.add_row("refresh token", "held: runs sign in silently" if state.has_refresh_token else "none")
    if state.access_token_expires_at is None:
        table.add_row("access token", "none cached")
    else:
        left = state.access_token_expires_at - time.time()
        table.add_row(
            "access token",
            f"expires {_local_time(state.access_token_expires_at)}"
            + (f" (in {left / 60:.0f} min)" if left > 0 else " (expired; renewed on next use)"),
        )
    table.add_row("token cache", str(state.cache_path))
    protection = state.cache_description
    if state.cache_fallback_reason:
        protection += f"; not encrypted: {state.cache_fallback_reason}"
    table.add_row("protection", protection)
    console.print(table)


@auth.command(name="logout")
@campaign_argument
@friendly_errors
def auth_logout(campaign_file: Path) -> None:
    """Remove the signed-in sender's tokens (or the app's) from the token cache."""
    removed = signin.logout(load_campaign(campaign_file))
    console.print(f"Removed the tokens of {', '.join(removed)}." if removed else "No tokens were cached.")


def _add_sandbox_commands() -> None:
    from mailmerge.sandbox.cli import sandbox

    main.add_command(sandbox)


_add_sandbox_commands()

"""`mailmerge sandbox serve`: run the emulator from a shell, for manual runs and `mailmerge run --sandbox`.

The command builds a `Sandbox`, prints where it listens and which credentials to use, streams the
request log as JSON lines (to stdout, or to the outbox's requests.log), and stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import json
import secrets
import signal
import threading
import uuid
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .profile import Profile
from .server import Sandbox

DEFAULT_TENANT = "contoso.onmicrosoft.com"
DEFAULT_MAILBOX = "news@contoso.example"


@click.group()
def sandbox() -> None:
    """A local emulator of Microsoft Graph mail and Entra ID, for tests and dry runs."""


@sandbox.command()
@click.option("--port", type=int, default=0, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option(
    "--outbox",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for delivered messages, the request log and the CA; kept across restarts.",
)
@click.option(
    "--profile",
    "profile_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A TOML profile (limits, faults, apps, mailboxes): see docs/sandbox.md.",
)
@click.option("--tenant", default=DEFAULT_TENANT, show_default=True, help="Tenant of the generated test app.")
@click.option("--client-id", default=None, help="Client id of the generated test app (default: a new GUID).")
@click.option("--mailbox", "mailboxes", multiple=True, help="A mailbox to create (repeatable).")
def serve(
    port: int,
    outbox: Path | None,
    profile_file: Path | None,
    tenant: str,
    client_id: str | None,
    mailboxes: tuple[str, ...],
) -> None:
    """Start the sandbox and serve until Ctrl-C."""
    console = Console(stderr=True)
    try:
        profile = Profile.from_toml(profile_file) if profile_file else Profile()
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot load profile {profile_file}: {exc}") from exc
    on_request = None if outbox else _print_json_line
    sb = Sandbox(profile, outbox=outbox, port=port, on_request=on_request)
    client_id = client_id or str(uuid.uuid4())
    secret = secrets.token_urlsafe(24)
    sb.register_app(tenant, client_id, secret=secret, public_client=True)
    if not mailboxes and not profile.mailboxes:
        mailboxes = (DEFAULT_MAILBOX,)
    for address in mailboxes:
        sb.add_mailbox(address)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        sb.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on port {port}: {exc}") from exc
    try:
        _banner(
            console,
            sb,
            tenant,
            client_id,
            secret,
            [*mailboxes, *(m.address for m in profile.mailboxes)],
            outbox,
        )
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sb.stop()
        console.print(f"[bold]sandbox stopped[/bold]: {len(sb.delivered())} messages delivered")


def _print_json_line(entry: dict[str, Any]) -> None:
    click.echo(json.dumps(entry, separators=(",", ":")))


def _banner(
    console: Console,
    sb: Sandbox,
    tenant: str,
    client_id: str,
    secret: str,
    mailboxes: list[str],
    outbox: Path | None,
) -> None:
    table = Table(title="mailmerge sandbox", show_header=False)
    table.add_row("Graph base URL", sb.graph_base_url)
    table.add_row("Authority", f"{sb.authority_host}/{tenant}")
    table.add_row("CA file to trust", str(sb.ca_file))
    table.add_row("Tenant", tenant)
    table.add_row("Client id", client_id)
    table.add_row("Client secret", f"{secret}  (test credential, shown once)")
    table.add_row("Mailboxes", ", ".join(mailboxes))
    table.add_row("Request log", str(outbox / "requests.log") if outbox else "stdout (JSON lines)")
    console.print(table)
    console.print("Press Ctrl-C to stop.")

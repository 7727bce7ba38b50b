"""``--sandbox``: run a campaign against the embedded Graph emulator instead of Microsoft.

Only the endpoints change: the campaign's authority and Graph URLs are pointed at the emulator
(HTTPS on 127.0.0.1, trusted through its throwaway CA), its app and mailboxes are registered there
with a one-off secret, and everything else — msal, aiohttp, the store — runs exactly as it would
against Microsoft. The emulator keeps what it delivered in ``<campaign>.sandbox/`` beside the
campaign file, so a rehearsal can be interrupted and resumed like a real run.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mailmerge.campaign import Campaign
from mailmerge.sandbox import Profile, Sandbox


@dataclass(frozen=True)
class Rehearsal:
    """A running emulator and the campaign pointed at it."""

    sandbox: Sandbox
    campaign: Campaign
    secret: str
    outbox: Path


def outbox_for(campaign: Campaign) -> Path:
    return campaign.path.with_name(f"{campaign.path.stem}.sandbox")


@contextmanager
def rehearse(campaign: Campaign, profile: Profile | None = None) -> Iterator[Rehearsal]:
    """Start the emulator for ``campaign``; stop it on exit."""
    outbox = outbox_for(campaign)
    sandbox = Sandbox(profile or Profile(), outbox=outbox)
    sandbox.start()
    try:
        secret = secrets.token_urlsafe(24)
        auth = campaign.settings.auth
        sandbox.register_app(tenant=auth.tenant, client_id=auth.client_id, secret=secret)
        for mailbox in campaign.mailboxes:
            sandbox.add_mailbox(mailbox)
        pointed = campaign.with_endpoints(
            authority=sandbox.authority_host, graph_base_url=sandbox.graph_base_url, ca_file=sandbox.ca_file
        )
        yield Rehearsal(sandbox=sandbox, campaign=pointed, secret=secret, outbox=outbox)
    finally:
        sandbox.stop()

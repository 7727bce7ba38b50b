"""The library's front door: pre-flight, import and sending of a campaign, usable without the CLI.

>>> campaign = load_campaign("campaigns/welcome.toml")
>>> with open_store(campaign) as store:
...     check = preflight(campaign)            # checks and renders every row; nothing is sent
...     import_recipients(campaign, store)     # idempotent: known keys are skipped
...     summary = asyncio.run(send(campaign, store, transport=..., tokens=...))
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mailmerge.campaign import Campaign
from mailmerge.clock import Clock
from mailmerge.errors import InputError, StoreError
from mailmerge.recipients import RecipientSource, RowProblem
from mailmerge.render import Renderer
from mailmerge.send.engine import Engine, RunSummary, SendSettings, TokenSource
from mailmerge.send.transport import Transport
from mailmerge.store import Status, Store
from mailmerge.validate import RowCheck, check_rows

PROBLEMS_SHOWN = 20


@dataclass
class Preflight:
    """What checking every row found (see :mod:`mailmerge.validate` for the order of the checks)."""

    rows: int = 0  # rows of the list that passed the ``where`` filter (empty rows not counted)
    problems: list[RowProblem] = field(default_factory=list)  # the first PROBLEMS_SHOWN invalid rows
    problem_count: int = 0  # rows that cannot be sent
    ready: int = 0
    duplicates: int = 0
    suppressed: int = 0
    filtered_out: int = 0
    upload_session: int = 0  # ready messages over 4 MB or with an attachment of 3 MB or more
    largest_message: int = 0  # bytes (estimated), among ready messages
    description: str = ""  # how the list was read: "UTF-8, ';'-separated", "sheet 'People'"
    warnings: list[str] = field(default_factory=list)
    skipped: list[RowCheck] = field(default_factory=list)  # the first duplicates and suppressions

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


@contextmanager
def open_store(campaign: Campaign, *, clock: Clock | None = None, url: str | None = None) -> Iterator[Store]:
    """The campaign's state database (its own URL unless ``url`` overrides it)."""
    store = Store(url or campaign.database_url, clock=clock)
    try:
        yield store
    finally:
        store.close()


def preflight(
    campaign: Campaign,
    renderer: Renderer | None = None,
    *,
    on_row: Callable[[RowCheck], None] | None = None,
) -> Preflight:
    """Check every row once (addresses, duplicates, suppressions, templates, attachments, sizes),
    collecting every problem; nothing is written or sent. ``on_row`` sees each row not ready."""
    source = RecipientSource(campaign)
    result = Preflight()
    for chunk in check_rows(campaign, source=source, renderer=renderer or Renderer(campaign)):
        for check in chunk:
            result.rows += 1
            if check.status is not Status.PENDING and on_row is not None:
                on_row(check)
            if check.status is Status.PENDING:
                result.ready += 1
                result.upload_session += check.upload_session
                result.largest_message = max(result.largest_message, check.size)
            elif check.status is Status.INVALID:
                result.problem_count += 1
                if len(result.problems) < PROBLEMS_SHOWN:
                    result.problems.append(check.problem)
            else:
                if check.status is Status.DUPLICATE:
                    result.duplicates += 1
                else:
                    result.suppressed += 1
                if len(result.skipped) < PROBLEMS_SHOWN:
                    result.skipped.append(check)
    result.filtered_out = source.filtered_out
    result.description = source.description
    result.warnings = list(source.warnings)
    return result


def require_preflight(
    campaign: Campaign, renderer: Renderer | None = None, *, skip_invalid: bool = False
) -> Preflight:
    """Pre-flight, raising :class:`InputError` (exit 3, zero messages sent) on any invalid row,
    unless ``skip_invalid`` (then those rows are recorded as invalid by :func:`import_recipients`)."""
    result = preflight(campaign, renderer)
    if not result.ok and not skip_invalid:
        more = result.problem_count - len(result.problems)
        raise InputError(
            f"{result.problem_count} of {result.rows} rows cannot be sent; nothing was sent",
            context=str(RecipientSource(campaign).path),
            problems=[str(p) for p in result.problems] + ([f"... and {more} more"] if more > 0 else []),
            hint="fix these rows (or the templates) and run again; `mailmerge validate --problems FILE` "
            "lists them all; --skip-invalid sends the others",
        )
    return result


def import_recipients(campaign: Campaign, store: Store, *, skip_invalid: bool = False) -> tuple[int, int]:
    """Record every row of the list once; returns (new, total rows). Idempotent: known keys are skipped.

    Ready rows enter as pending; duplicates and suppressed rows are recorded with that status so the
    report accounts for them. With ``skip_invalid`` every row is rendered again and invalid rows are
    recorded as invalid with their reason. Without it, :func:`require_preflight` has already refused a
    list with invalid rows, so rendering is not repeated: a row that cannot be read as a recipient is
    left out, and a row that would still fail to render is refused by the engine when it comes up.
    """
    campaign_id = store.campaign_id(campaign.name)
    assert campaign_id is not None
    new = total = 0
    for chunk in check_rows(campaign, render=skip_invalid):
        entries = [c.for_store() for c in chunk if skip_invalid or c.status is not Status.INVALID]
        total += len(chunk)
        new += store.import_recipients(campaign_id, entries)
    return new, total


def send_settings(campaign: Campaign) -> SendSettings:
    """The engine's settings from the campaign file."""
    limits = campaign.settings.limits
    return SendSettings(
        batch_size=limits.batch_size,
        concurrency=limits.concurrency,
        messages_per_minute=limits.rate_limit,
        daily_recipients=limits.daily_limit,
        max_attempts=limits.max_attempts,
        save_to_sent_items=campaign.settings.sender.save_to_sent_items,
        reconcile_after=limits.reconcile_after_seconds,
        reconcile_grace=limits.reconcile_grace_seconds,
        request_timeout=campaign.settings.graph.request_timeout,
        importance=campaign.settings.message.importance,
    )


def campaign_id_of(campaign: Campaign, store: Store) -> int:
    """The campaign's id in the store; an error if it was never run."""
    campaign_id = store.campaign_id(campaign.name, create=False)
    if campaign_id is None:
        raise StoreError(
            f"campaign {campaign.name!r} has no state in {store.url}",
            hint=f"start it with `mailmerge run {campaign.path}`",
        )
    return campaign_id


def build_engine(
    campaign: Campaign,
    store: Store,
    *,
    transport: Transport,
    tokens: TokenSource,
    settings: SendSettings | None = None,
    renderer: Renderer | None = None,
    rng: random.Random | None = None,
) -> Engine:
    """An engine ready to send the campaign's pending recipients, on the store's clock (one clock for
    both, so retry times written by the engine compare with the times the store reads)."""
    return Engine(
        store=store,
        campaign_id=campaign_id_of(campaign, store),
        mailboxes=campaign.mailboxes,
        renderer=renderer or Renderer(campaign),
        settings=settings or send_settings(campaign),
        transport=transport,
        tokens=tokens,
        graph_base_url=campaign.settings.graph.base_url,
        clock=store.clock,
        rng=rng,
    )


def counts(campaign: Campaign, store: Store) -> dict[Status, int]:
    """How many recipients of the campaign stand in each status."""
    return store.counts(campaign_id_of(campaign, store))


async def send(campaign: Campaign, store: Store, **engine_options: object) -> RunSummary:
    """Send every pending recipient (see :func:`build_engine` for the options)."""
    engine = build_engine(campaign, store, **engine_options)  # type: ignore[arg-type]
    try:
        return await engine.run()
    finally:
        await engine.transport.close()

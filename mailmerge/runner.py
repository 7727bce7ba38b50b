"""The library's front door: pre-flight, import and sending of a campaign, usable without the CLI.

>>> campaign = load_campaign("campaigns/welcome.toml")
>>> with open_store(campaign) as store:
...     check = preflight(campaign)            # renders every row; nothing is sent
...     import_recipients(campaign, store)     # idempotent: known keys are skipped
...     summary = asyncio.run(send(campaign, store, transport=..., tokens=...))
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mailmerge.campaign import Campaign
from mailmerge.clock import Clock, SystemClock
from mailmerge.errors import InputError, StoreError
from mailmerge.recipients import Recipient, RecipientSource, RowProblem
from mailmerge.render import Renderer
from mailmerge.send.engine import Engine, RunSummary, SendSettings, TokenSource
from mailmerge.send.transport import Transport
from mailmerge.store import Status, Store

PROBLEMS_SHOWN = 20


@dataclass
class Preflight:
    """What rendering every row found."""

    rows: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    problem_count: int = 0

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


def preflight(campaign: Campaign, renderer: Renderer | None = None) -> Preflight:
    """Render every row once, collecting every problem; nothing is written or sent."""
    renderer = renderer or Renderer(campaign)
    result = Preflight()
    seen: set[str] = set()
    for chunk in RecipientSource(campaign).chunks():
        for entry in chunk:
            result.rows += 1
            problem = entry if isinstance(entry, RowProblem) else _check(entry, renderer, seen)
            if problem is not None:
                result.problem_count += 1
                if len(result.problems) < PROBLEMS_SHOWN:
                    result.problems.append(problem)
    return result


def _check(recipient: Recipient, renderer: Renderer, seen: set[str]) -> RowProblem | None:
    if recipient.key in seen:
        return RowProblem(recipient.row, None, f"the same key as an earlier row ({recipient.key!r})")
    seen.add(recipient.key)
    rendered = renderer.render(recipient)
    return rendered if isinstance(rendered, RowProblem) else None


def require_preflight(campaign: Campaign, renderer: Renderer | None = None) -> Preflight:
    """Pre-flight, raising :class:`InputError` (exit 3, zero messages sent) on any problem."""
    result = preflight(campaign, renderer)
    if not result.ok:
        more = result.problem_count - len(result.problems)
        raise InputError(
            f"{result.problem_count} of {result.rows} rows cannot be sent; nothing was sent",
            context=str(RecipientSource(campaign).path),
            problems=[str(p) for p in result.problems] + ([f"... and {more} more"] if more > 0 else []),
            hint="fix these rows (or the templates) and run again",
        )
    return result


def import_recipients(campaign: Campaign, store: Store) -> tuple[int, int]:
    """Record every row of the list as a pending recipient once; returns (new, total rows)."""
    campaign_id = store.campaign_id(campaign.name)
    assert campaign_id is not None
    new = total = 0
    for chunk in RecipientSource(campaign).chunks():
        recipients = [entry for entry in chunk if isinstance(entry, Recipient)]
        total += len(chunk)
        new += store.import_recipients(campaign_id, recipients)
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
    clock: Clock | None = None,
    settings: SendSettings | None = None,
    renderer: Renderer | None = None,
    rng: random.Random | None = None,
) -> Engine:
    """An engine ready to send the campaign's pending recipients."""
    return Engine(
        store=store,
        campaign_id=campaign_id_of(campaign, store),
        mailboxes=campaign.mailboxes,
        renderer=renderer or Renderer(campaign),
        settings=settings or send_settings(campaign),
        transport=transport,
        tokens=tokens,
        graph_base_url=campaign.settings.graph.base_url,
        clock=clock or SystemClock(),
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

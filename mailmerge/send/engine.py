"""The sending engine: claims recipients from the store, sends them in ``$batch`` requests from each
mailbox at its limits, and records every outcome before it does anything else.

Exactly-once rests on three rules. A recipient is marked ``sending`` in the database *before* its
request leaves, so a crash leaves a trace. An answer that does not prove the message was or was not
accepted (5xx, timeout, reset, a crash) makes the recipient ``unknown``, never pending. And an
unknown recipient is only sent again once its tag is confirmed absent from the mailbox's Sent Items
after a grace period (or the user decides explicitly).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field, replace
from typing import Protocol

from mailmerge.clock import Clock
from mailmerge.errors import AuthError, MailmergeError, SendError
from mailmerge.render import Renderer, RowProblem
from mailmerge.send.graph import (
    BATCH_PATH,
    BatchItem,
    ItemAnswer,
    MalformedAnswer,
    OutgoingMessage,
    batch_body,
    mailbox_path,
    needs_upload_session,
    parse_answer,
    parse_batch,
    send_mail_item,
    sent_items_lookup_item,
)
from mailmerge.send.policy import Decision, RetryPolicy, Verdict, classify, classify_transport_error
from mailmerge.send.throttle import DailyCap, MailboxThrottle, RateWindow
from mailmerge.send.transport import Transport, TransportError
from mailmerge.send.upload import DraftSender
from mailmerge.store import ClaimedRecipient, Outcome, Status, Store, new_worker_id

DAY = 86_400.0
DAILY_REFRESH_SECONDS = 30.0
IDLE_POLL_SECONDS = 0.5
RECONCILE_POLL_SECONDS = 1.0
THROTTLE_CODES = frozenset({"TooManyRequests", "ApplicationThrottled"})


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refreshed: bool  # obtained by a forced refresh (after a 401)


#: What a message gets when no token could be had: it was never sent.
NO_TOKEN = Decision(Verdict.NOT_SENT, "SignInFailed", "not sent: no token could be obtained")


class TokenSource(Protocol):
    """What the engine needs from sign-in: a bearer token (fresh when asked to force it), and whether
    it is a delegated token, which sends as the signed-in user (``/me``) rather than naming mailboxes."""

    delegated: bool

    async def token(self, *, force_refresh: bool = False) -> str: ...


@dataclass
class SendSettings:
    """The limits and choices one run sends with (from the campaign's ``[limits]`` and ``[sender]``)."""

    batch_size: int = 20
    concurrency: int = 4
    messages_per_minute: float | None = 30
    daily_recipients: int | None = 10_000
    max_attempts: int = 8
    save_to_sent_items: bool = True
    reconcile_after: float = 30.0
    reconcile_grace: float = 300.0
    request_timeout: float = 60.0
    lease_seconds: float = 900.0
    importance: str = "normal"


@dataclass
class MailboxStats:
    """Live counters for one mailbox, read by the progress view."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    unknown: int = 0
    throttled: int = 0
    in_flight: int = 0
    waiting_until: float = 0.0
    waiting_reason: str | None = None
    stopped: str | None = None
    first_send_at: float | None = None


@dataclass
class RunStats:
    """Live counters for a run, per mailbox; the store stays the source of truth."""

    mailboxes: dict[str, MailboxStats] = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def sent(self) -> int:
        return sum(m.sent for m in self.mailboxes.values())

    @property
    def failed(self) -> int:
        return sum(m.failed for m in self.mailboxes.values())


@dataclass(frozen=True)
class RunSummary:
    """Where a campaign stands when the engine returns."""

    counts: dict[Status, int]
    interrupted: bool
    stopped_mailboxes: dict[str, str]


class Engine:
    """Sends one campaign's pending recipients from a pool of mailboxes."""

    def __init__(
        self,
        *,
        store: Store,
        campaign_id: int,
        mailboxes: list[str],
        renderer: Renderer,
        settings: SendSettings,
        transport: Transport,
        tokens: TokenSource,
        graph_base_url: str,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.campaign_id = campaign_id
        self.renderer = renderer
        self.settings = settings
        self.transport = transport
        self.tokens = tokens
        self.graph_base_url = graph_base_url.rstrip("/")
        self.clock = clock
        self.policy = RetryPolicy(max_attempts=settings.max_attempts, rng=rng or random.Random())
        self.worker = new_worker_id()
        self.stats = RunStats(mailboxes={m: MailboxStats() for m in mailboxes})
        self.throttles = {
            m: MailboxThrottle(
                rate=RateWindow(int(settings.messages_per_minute) if settings.messages_per_minute else None),
                daily=DailyCap(settings.daily_recipients),
            )
            for m in mailboxes
        }
        self.active = list(mailboxes)
        self.stopped: dict[str, str] = {}
        self._stop = asyncio.Event()
        self._slots = {m: asyncio.Semaphore(settings.concurrency) for m in mailboxes}
        self._next_reconcile = dict.fromkeys(mailboxes, 0.0)
        self._wake = {m: asyncio.Event() for m in mailboxes}
        self._senders = {m: mailbox_path(m, delegated=tokens.delegated) for m in mailboxes}
        # A request whose sender died can still be running at Graph; never call a message missing from
        # Sent Items before a live sender would itself have given up waiting for its answer.
        self._grace = max(settings.reconcile_grace, settings.request_timeout)
        self._force_refresh = False
        self._fatal: Exception | None = None
        self._batch_counter = 0

    # -- control -----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop taking new work; requests in flight finish and are recorded."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> RunSummary:
        """Send until every recipient is settled, the user stops us, or no mailbox can send."""
        self.stats.started_at = self.clock.time()
        self.store.release_stale_leases(self.campaign_id)
        workers = [asyncio.create_task(self._mailbox_loop(m), name=f"mailbox:{m}") for m in self.active]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
        if self._fatal is not None:
            raise self._fatal
        counts = self.store.counts(self.campaign_id)
        if not self.active and (counts[Status.PENDING] or counts[Status.UNKNOWN]):
            reasons = "; ".join(f"{m}: {why}" for m, why in self.stopped.items())
            raise SendError(
                f"no mailbox can send any more ({reasons})",
                hint="fix the mailbox permissions, then run `mailmerge resume` — nothing pending was lost",
            )
        return RunSummary(counts=counts, interrupted=self.stopping, stopped_mailboxes=dict(self.stopped))

    # -- the per-mailbox loop ----------------------------------------------------------------

    async def _mailbox_loop(self, mailbox: str) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self.stopping and mailbox in self.active and self._fatal is None:
                if not await self._mailbox_step(mailbox, in_flight):
                    break
        except Exception as exc:  # sign-in or database failure outside a batch: stop cleanly
            self._fail(exc)
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _mailbox_step(self, mailbox: str, in_flight: set[asyncio.Task[None]]) -> bool:
        """Reconcile, wait for the limits, or start one batch; False once this mailbox is done."""
        throttle = self.throttles[mailbox]
        stats = self.stats.mailboxes[mailbox]
        now = self.clock.time()
        self._refresh_daily(mailbox, now)
        if self.settings.save_to_sent_items and now >= self._next_reconcile[mailbox]:
            self._next_reconcile[mailbox] = now + RECONCILE_POLL_SECONDS
            await self._reconcile_due(mailbox)
        wait_until = throttle.ready_at(now)
        if throttle.daily.remaining() == 0:
            # Wait until the oldest message of the rolling 24 hours leaves it, then count again.
            oldest = self.store.window_started_at(mailbox, now - DAY)
            wait_until = max(wait_until, oldest + DAY if oldest is not None else now + DAILY_REFRESH_SECONDS)
            throttle.pause(wait_until, "daily recipient limit reached")
            throttle.daily.refreshed_at = float("-inf")
        if wait_until > now:
            if await self._finished(in_flight):
                return False
            stats.waiting_until, stats.waiting_reason = wait_until, throttle.pause_reason or "rate limit"
            await self._sleep(mailbox, wait_until - now)
            return True
        stats.waiting_until, stats.waiting_reason = 0.0, None
        slot = self._slots[mailbox]
        await slot.acquire()
        now = self.clock.time()
        allowed = throttle.allowance(now, self.settings.batch_size)
        claimed = []
        if allowed and not self.stopping:
            claimed = self.store.claim(
                self.campaign_id,
                mailbox,
                allowed,
                worker=self.worker,
                lease_seconds=self.settings.lease_seconds,
            )
        if not claimed:
            slot.release()
            if allowed and await self._finished(in_flight):
                return False
            await self._sleep(mailbox, IDLE_POLL_SECONDS if allowed else 0.05)
            return True
        throttle.took(now, len(claimed))
        stats.first_send_at = stats.first_send_at or now
        task = asyncio.create_task(self._send_batch(mailbox, claimed, slot, now))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        return True

    async def _finished(self, in_flight: set[asyncio.Task[None]]) -> bool:
        """True when nothing is left that this run could do: nothing in flight, nothing pending, and
        no unknown outcome that a mailbox still in the pool can look up."""
        if in_flight:
            return False
        if self.store.any_in(self.campaign_id, [Status.SENDING]):
            # Rows leased by a worker that died meanwhile would otherwise be waited on forever.
            self.store.release_stale_leases(self.campaign_id)
        if self.store.any_in(self.campaign_id, [Status.SENDING, Status.PENDING]):
            return False
        return not (
            self.settings.save_to_sent_items
            and self.store.any_in(self.campaign_id, [Status.UNKNOWN], mailboxes=self.active)
        )

    async def _sleep(self, mailbox: str, seconds: float) -> None:
        """Wait on the injected clock, waking early when a batch of ``mailbox`` ends or a stop is asked."""
        wake = self._wake[mailbox]
        waiters = {
            asyncio.ensure_future(self.clock.sleep(seconds)),
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(wake.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            wake.clear()

    def _refresh_daily(self, mailbox: str, now: float) -> None:
        daily = self.throttles[mailbox].daily
        if daily.limit is not None and now - daily.refreshed_at >= DAILY_REFRESH_SECONDS:
            daily.used = self.store.recipients_in_window(mailbox, now - DAY)
            daily.refreshed_at = now

    # -- sending -------------------------------------------------------------------------------

    def _next_batch_prefix(self) -> str:
        self._batch_counter += 1
        return f"b{self._batch_counter}-"

    async def _send_batch(
        self, mailbox: str, claimed: list[ClaimedRecipient], slot: asyncio.Semaphore, claimed_at: float
    ) -> None:
        stats = self.stats.mailboxes[mailbox]
        stats.in_flight += len(claimed)
        try:
            items: list[BatchItem] = []
            by_item: dict[str, tuple[ClaimedRecipient, OutgoingMessage]] = {}
            large: dict[str, tuple[ClaimedRecipient, OutgoingMessage]] = {}
            outcomes: list[Outcome] = []
            prefix = self._next_batch_prefix()
            for index, recipient in enumerate(claimed):
                message = self._message_for(recipient)
                if isinstance(message, RowProblem):
                    outcomes.append(
                        Outcome(recipient.id, Status.FAILED, "RenderError", str(message), attempted=False)
                    )
                    continue
                item_id = f"{prefix}{index}"
                if needs_upload_session(message):
                    large[item_id] = (recipient, message)
                    continue
                items.append(
                    send_mail_item(
                        item_id,
                        self._senders[mailbox],
                        message,
                        save_to_sent_items=self.settings.save_to_sent_items,
                    )
                )
                by_item[item_id] = (recipient, message)
            # Cc and Bcc count against the daily recipient limit too; the claim counted one each.
            self.throttles[mailbox].daily.used += sum(
                m.recipient_count - 1 for _r, m in (*by_item.values(), *large.values())
            )
            if items:
                answers = await self._post_batch(items)
                outcomes.extend(self._decide(mailbox, by_item, answers))
            if large:
                outcomes.extend(self._decide(mailbox, large, await self._send_large(mailbox, large)))
            self._settle_limits(mailbox, claimed, outcomes, claimed_at)
            self.store.record(self.campaign_id, outcomes, worker=self.worker)
            self._count(stats, outcomes)
        except Exception as exc:  # a bug, a database or sign-in failure: stop cleanly
            self._fail(exc)
        finally:
            stats.in_flight -= len(claimed)
            slot.release()
            self._wake[mailbox].set()

    async def _send_large(
        self, mailbox: str, messages: dict[str, tuple[ClaimedRecipient, OutgoingMessage]]
    ) -> dict[str, ItemAnswer | Decision]:
        """Send messages too big for ``sendMail`` one by one through drafts and upload sessions."""
        decisions: dict[str, ItemAnswer | Decision] = {}
        for item_id, (_recipient, message) in messages.items():
            token = await self._token()
            if token is None:
                decisions[item_id] = NO_TOKEN
                continue
            sender = DraftSender(
                self.transport,
                base_url=self.graph_base_url,
                token=token.value,
                timeout=self.settings.request_timeout,
                now=self.clock.time(),
            )
            decisions[item_id] = await sender.send(self._senders[mailbox], message)
        return decisions

    def _settle_limits(
        self, mailbox: str, claimed: list[ClaimedRecipient], outcomes: list[Outcome], claimed_at: float
    ) -> None:
        """Tell the mailbox's limits when the batch's messages were accepted.

        Exchange counts a message when it accepts it, somewhere between ``claimed_at`` and now; the
        slot is placed at now, the latest that can be, so our window never frees it before Exchange's
        does. A message that never reached Exchange gives its slot back.
        """
        by_id = {o.recipient_id: o for o in outcomes}
        done = self.clock.time()
        accepted = [done if self._reached_exchange(by_id[r.id]) else None for r in claimed]
        self.throttles[mailbox].settle(claimed_at, accepted)

    @staticmethod
    def _reached_exchange(outcome: Outcome) -> bool:
        """Whether Exchange may have counted this message against the mailbox's limits."""
        return outcome.status in (Status.SENT, Status.UNKNOWN) or (
            outcome.status is Status.FAILED and outcome.attempted
        )

    def _message_for(self, recipient: ClaimedRecipient) -> OutgoingMessage | RowProblem:
        rendered = self.renderer.render(recipient.as_recipient(), derive_text=False)
        if isinstance(rendered, RowProblem):
            return rendered
        return OutgoingMessage(
            to_address=recipient.email,
            to_name=recipient.name,
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            importance=self.settings.importance,
            tag=recipient.tag,
            cc=rendered.cc,
            bcc=rendered.bcc,
            reply_to=rendered.reply_to,
            headers=rendered.headers,
            attachments=rendered.attachments,
        )

    async def _post_batch(self, items: list[BatchItem]) -> dict[str, ItemAnswer | Decision]:
        """POST one ``$batch``; every item gets either Graph's answer or a decision for a lost answer."""
        body = batch_body(items, sequential=len(items) > 1)
        ids = [item.id for item in items]
        token = await self._token()
        if token is None:
            return dict.fromkeys(ids, NO_TOKEN)
        refreshed = token.refreshed
        try:
            response = await self.transport.request(
                "POST",
                self.graph_base_url + BATCH_PATH,
                body=body,
                timeout=self.settings.request_timeout,
                headers={
                    "Authorization": f"Bearer {token.value}",
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
            )
        except TransportError as exc:
            return dict.fromkeys(ids, classify_transport_error(exc))
        answers: dict[str, ItemAnswer | Decision]
        if response.status != 200:
            answers = dict.fromkeys(ids, parse_answer(response.status, response.headers, response.body))
        else:
            try:
                answers = dict(parse_batch(response.body, ids))
            except MalformedAnswer as exc:
                answers = dict.fromkeys(ids, Decision(Verdict.UNKNOWN, "MalformedAnswer", str(exc)))
        if refreshed and any(isinstance(a, ItemAnswer) and a.status == 401 for a in answers.values()):
            self._fail(
                AuthError(
                    "Graph refused a token that was just issued (401 InvalidAuthenticationToken)",
                    hint="it is for another resource or tenant: check [auth] tenant and [graph] base_url",
                )
            )
        return answers

    async def _token(self) -> _Token | None:
        """A bearer token (fresh after a 401); None when sign-in failed, which stops the run."""
        refreshed, self._force_refresh = self._force_refresh, False
        try:
            return _Token(await self.tokens.token(force_refresh=refreshed), refreshed)
        except MailmergeError as exc:
            self._fail(exc)
            return None

    def _fail(self, error: Exception) -> None:
        """Stop the run because of ``error``; what is recorded stays, leases mark what was in flight."""
        self._fatal = self._fatal or error
        self._stop.set()

    def _decide(
        self,
        mailbox: str,
        by_item: dict[str, tuple[ClaimedRecipient, OutgoingMessage]],
        answers: dict[str, ItemAnswer | Decision],
    ) -> list[Outcome]:
        now = self.clock.time()
        throttle = self.throttles[mailbox]
        outcomes: list[Outcome] = []
        for item_id, (recipient, message) in by_item.items():
            answer = answers[item_id]
            decision = answer if isinstance(answer, Decision) else classify(answer, now)
            outcome = self._outcome(mailbox, throttle, recipient, decision, now)
            outcomes.append(replace(outcome, recipient_count=message.recipient_count))
        return outcomes

    def _outcome(
        self,
        mailbox: str,
        throttle: MailboxThrottle,
        recipient: ClaimedRecipient,
        decision: Decision,
        now: float,
    ) -> Outcome:
        rid, verdict, code, message = recipient.id, decision.verdict, decision.code, decision.message
        attempts_after = recipient.attempts + 1
        if verdict is Verdict.SENT:
            return Outcome(rid, Status.SENT, sent_at=now)
        if verdict is Verdict.FAILED:
            return Outcome(rid, Status.FAILED, code, message)
        if verdict is Verdict.UNKNOWN:
            check_at = now + self.settings.reconcile_after if self.settings.save_to_sent_items else None
            return Outcome(rid, Status.UNKNOWN, code, message, retry_at=check_at)
        if verdict is Verdict.REAUTH:
            self._force_refresh = True  # one refresh; a refused fresh token stops the run (_post_batch)
            return Outcome(rid, Status.PENDING, code, message, attempted=False)
        if verdict is Verdict.MAILBOX_STOPPED:
            self._stop_mailbox(mailbox, code, message)
            return Outcome(rid, Status.PENDING, code, message, attempted=False)
        if verdict is Verdict.MAILBOX_PAUSED:
            throttle.pause(now + (decision.retry_after or 3600.0), f"quota: {code}")
            return Outcome(rid, Status.PENDING, code, message, attempted=False)
        if verdict is Verdict.NOT_SENT:
            return Outcome(rid, Status.PENDING, code, message, attempted=False)
        # Verdict.RETRY: not delivered.
        if decision.retry_after is not None or code in THROTTLE_CODES:
            delay = self.policy.delay(attempts_after, decision.retry_after)
            throttle.pause(now + delay, f"throttled by Graph ({code})")
            throttle.rate.fill(now)
            self.stats.mailboxes[mailbox].throttled += 1
            if self.settings.save_to_sent_items:
                # Throttling answers have been seen for mail that was delivered: look before resending.
                check_at = now + max(delay, self.settings.reconcile_after)
                return Outcome(rid, Status.UNKNOWN, code, message, retry_at=check_at)
            return Outcome(rid, Status.PENDING, code, message, attempted=False)
        if self.policy.exhausted(attempts_after):
            return Outcome(rid, Status.FAILED, code, f"gave up after {attempts_after} attempts: {message}")
        retry_at = now + self.policy.delay(attempts_after, None)
        return Outcome(rid, Status.PENDING, code, message, retry_at=retry_at)

    def _stop_mailbox(self, mailbox: str, code: str | None, message: str | None) -> None:
        if mailbox in self.active:
            self.active.remove(mailbox)
            reason = f"{code}: {message}" if message else str(code)
            self.stopped[mailbox] = reason
            self.stats.mailboxes[mailbox].stopped = reason

    @staticmethod
    def _count(stats: MailboxStats, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.status is Status.SENT:
                stats.sent += 1
            elif outcome.status is Status.FAILED:
                stats.failed += 1
            elif outcome.status is Status.UNKNOWN:
                stats.unknown += 1
            else:
                stats.retried += 1

    # -- reconciliation ------------------------------------------------------------------------

    async def _reconcile_due(self, mailbox: str) -> None:
        """Look up unknown recipients of ``mailbox`` in Sent Items; settle those that can be settled."""
        claimed = self.store.claim_unknown(
            self.campaign_id,
            mailbox,
            self.settings.batch_size,
            worker=self.worker,
            lease_seconds=self.settings.lease_seconds,
        )
        if not claimed:
            return
        slot = self._slots[mailbox]
        async with slot:
            items = [
                sent_items_lookup_item(f"r{index}", self._senders[mailbox], r.tag)
                for index, r in enumerate(claimed)
            ]
            answers = await self._post_batch(items)
        now = self.clock.time()
        outcomes = [
            self._reconciled(r, answers[f"r{index}"], r.last_attempt_at, now)
            for index, r in enumerate(claimed)
        ]
        self.store.record(self.campaign_id, outcomes, worker=self.worker, from_status=Status.UNKNOWN)
        stats = self.stats.mailboxes[mailbox]
        stats.sent += sum(o.status is Status.SENT for o in outcomes)
        stats.unknown -= sum(o.status is not Status.UNKNOWN for o in outcomes)

    def _reconciled(
        self, recipient: ClaimedRecipient, answer: ItemAnswer | Decision, attempted_at: float, now: float
    ) -> Outcome:
        rid = recipient.id
        if isinstance(answer, ItemAnswer) and answer.status == 200 and isinstance(answer.body, dict):
            if answer.body.get("value"):
                return Outcome(
                    rid, Status.SENT, "FoundInSentItems", "confirmed in Sent Items", sent_at=attempted_at
                )
            if now - attempted_at >= self._grace:
                if self.policy.exhausted(recipient.attempts):
                    return Outcome(
                        rid,
                        Status.FAILED,
                        "NotInSentItems",
                        f"gave up after {recipient.attempts} attempts whose outcome stayed unknown",
                    )
                return Outcome(
                    rid, Status.PENDING, "NotInSentItems", "not found in Sent Items; sending again"
                )
            check_at = min(attempted_at + self._grace, now + self.settings.reconcile_after)
            return Outcome(
                rid, Status.UNKNOWN, "AwaitingSentItems", "not in Sent Items yet", retry_at=check_at
            )
        code = answer.code if isinstance(answer, Decision) else answer.error_code or f"HTTP{answer.status}"
        message = answer.message if isinstance(answer, Decision) else answer.error_message
        if isinstance(answer, ItemAnswer) and answer.status == 403:
            message = (
                f"cannot read Sent Items ({message}); grant Mail.ReadBasic.All or decide with "
                "`mailmerge resume --assume-sent/--assume-unsent`"
            )
        return Outcome(rid, Status.UNKNOWN, code, message, retry_at=now + self.settings.reconcile_after)

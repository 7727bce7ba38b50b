"""What an answer from Graph means for a recipient and a mailbox, and when to try again.

Pure: no I/O, the time and the randomness are arguments, so every rule of GRAPH-CONTRACT.md's
"which failures are final" table is tested without a network or a sleep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum

from tenacity import RetryCallState, wait_exponential

from mailmerge.send.graph import ItemAnswer
from mailmerge.send.transport import TransportError


class Verdict(StrEnum):
    """What happened to one message."""

    SENT = "sent"  # 202: accepted for delivery
    FAILED = "failed"  # this recipient's message cannot be sent as it is
    RETRY = "retry"  # not delivered (throttled, no connection): send again later
    NOT_SENT = "not_sent"  # never attempted (dependency failed, no token): back to pending, no penalty
    UNKNOWN = "unknown"  # may have been delivered: look in Sent Items before sending again
    REAUTH = "reauth"  # the token was refused: get a new one, then send again
    MAILBOX_STOPPED = "mailbox_stopped"  # this mailbox cannot send at all (permissions, no mailbox)
    MAILBOX_PAUSED = "mailbox_paused"  # this mailbox hit its sending quota


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None  # seconds, as the server asked


#: Error codes that mean the sending mailbox itself is unusable, whatever the recipient.
MAILBOX_CODES = frozenset(
    {
        "ErrorAccessDenied",
        "ErrorSendAsDenied",
        "MailboxNotEnabledForRESTAPI",
        "ErrorInvalidUser",
        "ResourceNotFound",
        "ErrorMailboxNotEnabled",
        "Authorization_RequestDenied",
    }
)
QUOTA_CODES = frozenset({"ErrorQuotaExceeded", "ErrorSubmissionQuotaExceeded", "ErrorExceededMessageLimit"})


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds from now: integer or fractional seconds, or an HTTP date."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def classify(answer: ItemAnswer, now: float) -> Decision:
    """The verdict for one answer from Graph."""
    status, code, message = answer.status, answer.error_code, answer.error_message
    retry_after = parse_retry_after(answer.header("Retry-After"), now)
    if 200 <= status < 300:
        return Decision(Verdict.SENT)
    if status == 424:
        return Decision(
            Verdict.NOT_SENT, "FailedDependency", "not executed: an earlier item of its batch failed"
        )
    if code in QUOTA_CODES:
        return Decision(Verdict.MAILBOX_PAUSED, code, message, retry_after)
    if status == 429:
        return Decision(Verdict.RETRY, code or "TooManyRequests", message, retry_after)
    if status == 401:
        return Decision(Verdict.REAUTH, code or "InvalidAuthenticationToken", message)
    if status in (403, 404) and (code in MAILBOX_CODES or code is None):
        return Decision(Verdict.MAILBOX_STOPPED, code or f"HTTP{status}", message)
    if status >= 500:
        return Decision(Verdict.UNKNOWN, code or f"HTTP{status}", message, retry_after)
    return Decision(Verdict.FAILED, code or f"HTTP{status}", message)


def classify_transport_error(error: TransportError) -> Decision:
    """A request that got no answer: unknown if it may have arrived, else simply to be retried."""
    verdict = Verdict.UNKNOWN if error.maybe_delivered else Verdict.RETRY
    return Decision(verdict, error.kind.capitalize() if error.kind else "Network", error.detail)


@dataclass
class RetryPolicy:
    """How many attempts a message gets and how long to wait between them.

    The server's ``Retry-After`` always wins; without it, exponential backoff (tenacity's schedule)
    with jitter drawn from ``rng`` so that many workers do not retry in lockstep.
    """

    max_attempts: int = 8
    initial: float = 1.0
    maximum: float = 300.0
    rng: random.Random = field(default_factory=random.Random)

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt number ``attempt + 1``."""
        if retry_after is not None:
            return retry_after
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempt)
        ceiling = wait_exponential(multiplier=self.initial, max=self.maximum)(state)
        return self.rng.uniform(ceiling / 2, ceiling)

"""What a person should do about each way a recipient can end up not (cleanly) delivered.

Reports group recipients by status and cause (a Graph error code, or a bounce's enhanced status code)
and show one plain-language explanation and fix per group. The rules follow GRAPH-CONTRACT.md's
"which failures are final" table and Exchange Online's NDR codes.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailmerge.store import Status


@dataclass(frozen=True, slots=True)
class Advice:
    """What happened, in plain words, and what to do about it."""

    what: str
    fix: str


_RETRY = "then `mailmerge retry-failed {campaign} --code {code}` and `mailmerge resume {campaign}`"

#: Graph error codes of failed recipients.
FAILED_ADVICE: dict[str, Advice] = {
    "ErrorInvalidRecipients": Advice(
        "Graph refused the recipient's address.",
        "Check the address in the spreadsheet and correct it, " + _RETRY + ".",
    ),
    "ErrorAccessDenied": Advice(
        "The app was not allowed to send as this mailbox.",
        "An administrator must grant the app the Microsoft Graph application permission Mail.Send "
        "(API permissions → Grant admin consent) and allow this mailbox in any application access "
        "policy; " + _RETRY + ".",
    ),
    "ErrorSendAsDenied": Advice(
        "The app or user may not send as this mailbox.",
        "Grant Send As on the mailbox (or send from a mailbox the app may use), " + _RETRY + ".",
    ),
    "MailboxNotEnabledForRESTAPI": Advice(
        "The sending address has no Exchange Online mailbox.",
        "Send from a licensed Exchange Online mailbox ([sender] in the campaign file), " + _RETRY + ".",
    ),
    "ErrorMessageSizeExceeded": Advice(
        "The message was too large.",
        "Make the attachments smaller (under 3 MB each and 4 MB per message), " + _RETRY + ".",
    ),
    "RequestEntityTooLarge": Advice(
        "The message was too large.",
        "Make the attachments smaller (under 3 MB each and 4 MB per message), " + _RETRY + ".",
    ),
    "InvalidInternetMessageHeader": Advice(
        "Graph refused a custom header.",
        "Custom headers must start with X- and number at most 5; fix the campaign's headers, " + _RETRY + ".",
    ),
    "RenderError": Advice(
        "The templates could not be rendered for this row.",
        "Fix the row in the spreadsheet or the template (the message names the variable), " + _RETRY + ".",
    ),
    "NotInSentItems": Advice(
        "Several attempts had an unknown outcome and the message never appeared in Sent Items.",
        "Ask the recipient or check the mailbox; if it was not delivered, " + _RETRY + ".",
    ),
}
for _alias, _same in (
    ("Authorization_RequestDenied", "ErrorAccessDenied"),
    ("ErrorMailboxNotEnabled", "MailboxNotEnabledForRESTAPI"),
    ("ErrorInvalidUser", "MailboxNotEnabledForRESTAPI"),
    ("ResourceNotFound", "MailboxNotEnabledForRESTAPI"),
    ("InvalidInternetMessageHeaderCollection", "InvalidInternetMessageHeader"),
):
    FAILED_ADVICE[_alias] = FAILED_ADVICE[_same]

_GAVE_UP = Advice(
    "Graph kept answering with a temporary error until the attempts ran out.",
    "Wait, perhaps lower [limits] messages_per_minute, " + _RETRY + ".",
)
_FAILED_DEFAULT = Advice(
    "Graph refused this message.",
    "Read the error message and fix its cause, " + _RETRY + ".",
)

STATUS_ADVICE: dict[Status, Advice] = {
    Status.UNKNOWN: Advice(
        "The answer to the send request was lost: the message may or may not have gone out.",
        "Run `mailmerge resume {campaign}`: it looks for each message in Sent Items before sending "
        "again (without Sent Items, decide with --assume-sent or --assume-unsent).",
    ),
    Status.INVALID: Advice(
        "The row cannot be sent as it is.",
        "Fix the row in the spreadsheet and run the campaign again.",
    ),
    Status.SUPPRESSED: Advice(
        "The address is on a suppression list, so it was never sent.",
        "Nothing to do, unless the address was suppressed by mistake.",
    ),
    Status.DUPLICATE: Advice(
        "The row has the same key as an earlier row; the earlier row was used.",
        "Nothing to do; remove the duplicate rows if they are mistakes.",
    ),
    Status.PENDING: Advice(
        "Waiting for another attempt after a temporary error.",
        "Nothing to do: `mailmerge resume {campaign}` sends them when they are due.",
    ),
}

#: Hard bounces by enhanced status code (longest prefix wins).
BOUNCE_ADVICE: dict[str, Advice] = {
    "5.1.": Advice(
        "The address does not exist at the recipient's domain.",
        "Correct the address in the spreadsheet or drop it; export the bounced addresses as a "
        "suppression list for the next campaign (`mailmerge bounces {campaign} --export-suppressions FILE`).",
    ),
    "5.2.2": Advice(
        "The recipient's mailbox is full.",
        "Reach the recipient another way; send again later if it matters.",
    ),
    "5.2.": Advice(
        "The recipient's mailbox refused the message (disabled, full or over a size limit).",
        "Check the address with the recipient; send again later if it matters.",
    ),
    "5.4.": Advice(
        "The recipient's domain could not be reached (no such domain or a routing problem).",
        "Check the part of the address after the @ for typos.",
    ),
    "5.7.": Advice(
        "The recipient's server refused the message by policy (spam filtering, sender authentication "
        "or a blocked sender).",
        "Check SPF, DKIM and DMARC for the sending domain; ask the recipient's administrator to allow it.",
    ),
}
_BOUNCE_DEFAULT = Advice(
    "Delivery failed permanently.",
    "Check the address and the diagnostic; drop or correct the address.",
)
SOFT_BOUNCE = Advice(
    "Delivery failed for a temporary reason (4.x.x): the message was not delivered, but the address "
    "is not known to be bad.",
    "The recipient stays 'sent' and is not suppressed; send again later if it matters.",
)


def advice_for(
    status: Status, code: str | None, *, soft_bounce: bool = False, campaign: str = "CAMPAIGN"
) -> Advice:
    """The advice for one group of recipients; ``campaign`` is the campaign file named in commands."""
    if soft_bounce:
        found = SOFT_BOUNCE
    elif status is Status.BOUNCED:
        prefixes = sorted((p for p in BOUNCE_ADVICE if (code or "").startswith(p)), key=len, reverse=True)
        found = BOUNCE_ADVICE[prefixes[0]] if prefixes else _BOUNCE_DEFAULT
    elif status is Status.FAILED:
        transient = code in {"TooManyRequests", "ApplicationThrottled", "ErrorServerBusy"} or (
            code or ""
        ).startswith(("HTTP5", "Timeout", "Connection", "Connect"))
        found = FAILED_ADVICE.get(code or "", _GAVE_UP if transient else _FAILED_DEFAULT)
    else:
        found = STATUS_ADVICE.get(status, _FAILED_DEFAULT)
    code_text = code or "CODE"
    return Advice(found.what, found.fix.replace("{campaign}", campaign).replace("{code}", code_text))

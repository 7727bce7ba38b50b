"""The one exception tree of mailmerge, and the exit codes the CLI maps it to.

Every error a user can cause or fix is a :class:`MailmergeError` carrying a short message, the
context it happened in (file, row, column, mailbox) and a hint saying how to fix it. Lower-level
exceptions (pydantic, pandas, jinja2, msal, aiohttp, SQLAlchemy) are translated into this tree at the
boundary of the module that calls them, always ``raise ... from exc``, so the CLI never shows a raw
traceback for a user mistake::

    MailmergeError
    ├── ConfigError        the campaign file, a template or a setting is wrong    (exit 2)
    ├── InputError         the recipient data does not pass pre-flight             (exit 3)
    ├── AuthError          sign-in failed or the app lacks a permission            (exit 4)
    ├── SendError          the run cannot go on (every mailbox stopped, ...)       (exit 5)
    └── StoreError         the state database cannot be used                       (exit 6)

Outcomes of a run that are not errors have their own codes: some recipients failed (10) and the
run was interrupted (130, as shells report SIGINT).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; distinct so scripts can tell configuration from runtime trouble."""

    OK = 0
    UNEXPECTED = 1
    CONFIG = 2
    INPUT = 3
    AUTH = 4
    SEND = 5
    STORE = 6
    SOME_FAILED = 10
    INTERRUPTED = 130


class MailmergeError(Exception):
    """Something the user can act on went wrong."""

    exit_code: ExitCode = ExitCode.UNEXPECTED

    def __init__(self, message: str, *, hint: str | None = None, context: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.context = context

    def __str__(self) -> str:
        parts = [f"{self.context}: {self.message}" if self.context else self.message]
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class ConfigError(MailmergeError):
    """The campaign file, a template or a setting is wrong."""

    exit_code = ExitCode.CONFIG


class InputError(MailmergeError):
    """The recipient list does not pass pre-flight; nothing was sent."""

    exit_code = ExitCode.INPUT

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        context: str | None = None,
        problems: list[str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint, context=context)
        self.problems = problems or []

    def __str__(self) -> str:
        lines = [super().__str__(), *(f"  - {problem}" for problem in self.problems)]
        return "\n".join(lines)


class AuthError(MailmergeError):
    """Sign-in failed, or the app or user lacks a permission."""

    exit_code = ExitCode.AUTH


class SendError(MailmergeError):
    """The run cannot go on; recipients not yet sent stay pending for a resume."""

    exit_code = ExitCode.SEND


class StoreError(MailmergeError):
    """The state database cannot be opened or does not match this campaign."""

    exit_code = ExitCode.STORE

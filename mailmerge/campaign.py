"""The campaign file: a TOML document describing one mail merge, loaded into typed settings.

The file is the user's contract with the tool, so every key is validated (unknown keys are
rejected, catching typos) and every error names the file, the key and what is expected. Paths in
the file are relative to the file itself, so a campaign folder can be moved or checked in as a whole.
"""

from __future__ import annotations

import codecs
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from babel import Locale, UnknownLocaleError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mailmerge.errors import ConfigError

PUBLIC_AUTHORITY = "https://login.microsoftonline.com"
PUBLIC_GRAPH = "https://graph.microsoft.com/v1.0"
GRAPH_BATCH_LIMIT = 20
MAILBOX_CONCURRENCY_LIMIT = 4
#: Graph allows five custom headers per message; mailmerge's own tag header takes one.
MAX_CUSTOM_HEADERS = 4
RESERVED_HEADER = "X-MailMerge-Id"
DELIMITERS = (",", ";", "\t", "|")
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
_HEADER_NAME = re.compile(r"[Xx]-[A-Za-z0-9][A-Za-z0-9-]*")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CampaignSection(_Section):
    name: Annotated[str, Field(min_length=1)]
    database: str | None = None


class SenderSection(_Section):
    mailbox: str | None = None
    mailboxes: list[str] = []
    save_to_sent_items: bool = True

    @model_validator(mode="after")
    def _one_way_to_name_senders(self) -> SenderSection:
        if not self.mailbox and not self.mailboxes:
            raise ValueError('name the sending mailbox: mailbox = "news@contoso.com" (or mailboxes = [...])')
        if self.mailbox and self.mailboxes:
            raise ValueError("give either mailbox or mailboxes, not both")
        senders = self.all_mailboxes
        if len({m.lower() for m in senders}) != len(senders):
            raise ValueError("mailboxes lists the same mailbox twice")
        return self

    @property
    def all_mailboxes(self) -> list[str]:
        return [self.mailbox] if self.mailbox else list(self.mailboxes)


class RecipientsSection(_Section):
    source: Annotated[str, Field(min_length=1)]
    sheet: str | int | None = None
    email: str = "email"
    name: str | None = None
    key: str | list[str] | None = None
    encoding: str | None = None
    delimiter: str | None = None
    where: str | None = None
    suppress: list[str] = []
    check_deliverability: bool = False

    @property
    def key_columns(self) -> list[str]:
        if self.key is None:
            return [self.email]
        return [self.key] if isinstance(self.key, str) else list(self.key)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError("unknown encoding (try utf-8, utf-16, cp1252 or latin-1)") from None
        return value

    @field_validator("delimiter")
    @classmethod
    def _one_delimiter(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = DELIMITER_NAMES.get(value.lower(), value)
        if value not in DELIMITERS:
            raise ValueError('give one of ",", ";", "|" or "tab"')
        return value

    @field_validator("where")
    @classmethod
    def _filter_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("the filter is empty: remove the key or give a condition like country == 'NL'")
        return value


class MessageSection(_Section):
    subject: Annotated[str, Field(min_length=1)]
    html: str | None = None
    text: str | None = None
    markdown: str | None = None
    importance: Literal["low", "normal", "high"] = "normal"
    cc: str | list[str] = []
    bcc: str | list[str] = []
    reply_to: str | list[str] = []
    headers: dict[str, str] = {}
    attachments: list[str] = []
    allow_outside: bool = False
    inline_css: bool = True
    locale: str = "en"

    @model_validator(mode="after")
    def _needs_a_body(self) -> MessageSection:
        if not self.html and not self.text and not self.markdown:
            raise ValueError(
                'give a body template: html = "...html.j2", markdown = "...md.j2" and/or text = "...txt.j2"'
            )
        if self.html and self.markdown:
            raise ValueError("give html or markdown, not both (the markdown becomes the HTML body)")
        return self

    @field_validator("headers")
    @classmethod
    def _custom_headers(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_CUSTOM_HEADERS:
            raise ValueError(
                f"at most {MAX_CUSTOM_HEADERS} custom headers: Graph allows 5 per message and mailmerge "
                f"uses one for its own tag ({RESERVED_HEADER})"
            )
        seen: set[str] = set()
        for name in value:
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header {name!r} must start with X- and use only letters, digits and -")
            if name.lower() == RESERVED_HEADER.lower():
                raise ValueError(f"header {name!r} is mailmerge's own tag; choose another name")
            if name.lower() in seen:
                raise ValueError(f"header {name!r} is given twice")
            seen.add(name.lower())
        return value

    @field_validator("locale")
    @classmethod
    def _known_locale(cls, value: str) -> str:
        value = value.replace("-", "_")
        try:
            Locale.parse(value)
        except (ValueError, UnknownLocaleError):
            raise ValueError("unknown locale (examples: en, en_GB, nl_NL, de_DE)") from None
        return value

    @property
    def address_templates(self) -> dict[str, list[str]]:
        """The templated cc, bcc and reply-to fields, each as a list of templates."""
        return {
            key: [value] if isinstance(value, str) else list(value)
            for key, value in (("cc", self.cc), ("bcc", self.bcc), ("reply_to", self.reply_to))
        }


class AuthSection(_Section):
    """How the campaign signs in (see docs/auth.md for what each mode needs in Entra ID)."""

    mode: Literal["client_credentials", "device_code", "auth_code"] = "client_credentials"
    tenant: Annotated[str, Field(min_length=1)]
    client_id: Annotated[str, Field(min_length=1)]
    # App-only credentials: exactly one of a secret in a variable, a secret in a file, a certificate.
    client_secret_env: str | None = "MAILMERGE_CLIENT_SECRET"  # noqa: S105 - the name of a variable
    client_secret_file: str | None = None
    certificate: str | None = None
    certificate_passphrase_env: str | None = None
    thumbprint: str | None = None
    # Delegated sign-in: the Graph permissions asked for (msal adds openid, profile, offline_access).
    scopes: Annotated[list[str], Field(min_length=1)] = ["Mail.Send"]
    redirect_port: Annotated[int, Field(ge=0, le=65535)] = 0
    # Where tokens are kept: a folder (default ~/.cache/mailmerge) and whether it must be encrypted.
    token_cache: str | None = None
    token_cache_encryption: Literal["auto", "required", "off"] = "auto"  # noqa: S105 - not a secret
    authority: str = PUBLIC_AUTHORITY
    ca_file: str | None = None

    @field_validator("authority")
    @classmethod
    def _https_authority(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("the authority must be an https:// URL (msal refuses anything else)")
        return value.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _no_reserved_scopes(cls, value: list[str]) -> list[str]:
        reserved = {"openid", "profile", "offline_access"} & {s.lower() for s in value}
        if reserved:
            raise ValueError(f"leave out {', '.join(sorted(reserved))}: msal asks for them itself")
        return value

    @model_validator(mode="after")
    def _one_credential(self) -> AuthSection:
        given = self.model_fields_set
        app_only_keys = {"client_secret_file", "certificate", "certificate_passphrase_env", "thumbprint"}
        if self.delegated:
            extra = sorted(k for k in app_only_keys | {"client_secret_env"} if k in given)
            if extra:
                raise ValueError(
                    f"{', '.join(extra)}: a delegated sign-in ({self.mode}) uses no app credential; "
                    'remove them, or use mode = "client_credentials"'
                )
            return self
        credentials = [k for k in ("client_secret_env", "client_secret_file", "certificate") if k in given]
        if len(credentials) > 1:
            raise ValueError(f"give one credential, not {' and '.join(credentials)}")
        if not self.certificate and {"certificate_passphrase_env", "thumbprint"} & given:
            raise ValueError('certificate_passphrase_env and thumbprint go with certificate = "..."')
        return self

    @property
    def delegated(self) -> bool:
        """True for the modes in which a user signs in and the campaign sends as that user (/me)."""
        return self.mode != "client_credentials"


class GraphSection(_Section):
    base_url: str = PUBLIC_GRAPH
    ca_file: str | None = None
    request_timeout: Annotated[float, Field(gt=0)] = 60.0

    @field_validator("base_url")
    @classmethod
    def _https_graph(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("the Graph base URL must be an https:// URL")
        return value.rstrip("/")


class LimitsSection(_Section):
    batch_size: Annotated[int, Field(ge=1, le=GRAPH_BATCH_LIMIT)] = GRAPH_BATCH_LIMIT
    concurrency: Annotated[int, Field(ge=1, le=MAILBOX_CONCURRENCY_LIMIT)] = MAILBOX_CONCURRENCY_LIMIT
    messages_per_minute: Annotated[float, Field(gt=0)] | Literal["unlimited"] = 30
    daily_recipients: Annotated[int, Field(ge=1)] | Literal["unlimited"] = 10_000
    max_attempts: Annotated[int, Field(ge=1)] = 8
    reconcile_after_seconds: Annotated[float, Field(ge=0)] = 30.0
    reconcile_grace_seconds: Annotated[float, Field(ge=0)] = 300.0
    max_message_mb: Annotated[float, Field(gt=0, le=150)] = 35.0

    @property
    def rate_limit(self) -> float | None:
        """Messages per minute per mailbox, or None when the user lifted the limit."""
        return None if self.messages_per_minute == "unlimited" else float(self.messages_per_minute)

    @property
    def daily_limit(self) -> int | None:
        """Recipients per rolling 24 hours per mailbox, or None when the user lifted the limit."""
        return None if self.daily_recipients == "unlimited" else int(self.daily_recipients)


class CampaignFile(_Section):
    campaign: CampaignSection
    sender: SenderSection
    recipients: RecipientsSection
    message: MessageSection
    auth: AuthSection
    graph: GraphSection = GraphSection()
    limits: LimitsSection = LimitsSection()

    @model_validator(mode="after")
    def _delegated_sends_as_one_user(self) -> CampaignFile:
        if self.auth.delegated and self.sender.mailboxes:
            raise ValueError(
                f'[auth] mode = "{self.auth.mode}" sends only as the user who signed in: give '
                '[sender] mailbox = "..." (that user\'s address) instead of a pool of mailboxes'
            )
        return self


class Campaign:
    """A loaded campaign: the validated settings plus the folder its relative paths start from."""

    def __init__(self, settings: CampaignFile, path: Path) -> None:
        self.settings = settings
        self.path = path
        self.folder = path.parent

    @property
    def name(self) -> str:
        return self.settings.campaign.name

    @property
    def mailboxes(self) -> list[str]:
        return self.settings.sender.all_mailboxes

    def resolve(self, relative: str) -> Path:
        """A path from the campaign file, taken relative to the file's folder."""
        candidate = Path(relative).expanduser()
        return candidate if candidate.is_absolute() else (self.folder / candidate)

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL of the state database (default: ``<stem>.db`` beside the file)."""
        database = self.settings.campaign.database
        if database and "://" in database:
            return database
        path = self.resolve(database) if database else self.path.with_suffix(".db")
        return f"sqlite:///{path.resolve()}"

    def with_endpoints(self, *, authority: str, graph_base_url: str, ca_file: Path) -> Campaign:
        """A copy pointed at other endpoints, as ``--sandbox`` and national clouds need."""
        settings = self.settings.model_copy(
            update={
                "auth": self.settings.auth.model_copy(
                    update={"authority": authority, "ca_file": str(ca_file)}
                ),
                "graph": self.settings.graph.model_copy(
                    update={"base_url": graph_base_url, "ca_file": str(ca_file)}
                ),
            }
        )
        return Campaign(settings, self.path)


def _describe(error: dict[str, object]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "unknown key (a typo? see the campaign-file reference in the README)"
    elif error.get("type") == "missing":
        message = "required key is missing"
    section, _, key = location.partition(".")
    where = f"[{section}] {key}" if key else f"[{section}]"
    given = error.get("input")
    shown = (
        ""
        if error.get("type") in {"missing", "extra_forbidden"} or isinstance(given, dict)
        else f" (got {given!r})"
    )
    return f"{where}: {message}{shown}" if location else f"{message}{shown}"  # a rule across sections


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate a campaign file; every problem is reported at once, by key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"campaign file not found: {path}", hint="check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"not valid TOML: {exc}", context=str(path), hint="fix the syntax at that line"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the campaign file: {exc}", context=str(path)) from exc
    try:
        settings = CampaignFile.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(dict(error)) for error in exc.errors()]
        raise ConfigError(
            "the campaign file is not valid:\n  - " + "\n  - ".join(problems),
            context=str(path),
            hint="fix the keys listed; the README's campaign-file reference lists every key",
        ) from exc
    return Campaign(settings, path.resolve())

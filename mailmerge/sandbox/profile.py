"""The sandbox's configuration: limits, faults, latency and the directory it starts with.

Plain frozen dataclasses so a test can build one in a line and a TOML file can describe the same thing
(`Profile.from_toml`). The TOML format is documented in docs/sandbox.md.
"""

from __future__ import annotations

import dataclasses
import random
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

MiB = 1024 * 1024
RETRY_AFTER_STYLES = ("integer", "fractional", "http-date")


@dataclass(frozen=True)
class Limits:
    """Exchange Online and Graph limits, enforced per app per mailbox (see docs/sandbox.md).

    Any limit may be None: unlimited. The defaults are the documented service limits.
    """

    messages_per_minute: int | None = 30
    concurrent_requests: int | None = 4
    requests_per_10_minutes: int | None = 10_000
    recipients_per_24h: int | None = 10_000
    upload_bytes_per_5_minutes: int | None = 150 * MiB
    max_request_bytes: int | None = 4 * MiB
    max_recipients_per_message: int | None = 500

    @classmethod
    def unlimited(cls) -> Limits:
        """No limit at all: for benchmarks and tests that are not about throttling."""
        return cls(*(None for _ in dataclasses.fields(cls)))


@dataclass(frozen=True)
class Every:
    """A fault that strikes every n-th request of its kind (1 = every request), instead of at random."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Every(n) needs n >= 1, got {self.n}")


Chance = float | Every


@dataclass(frozen=True)
class Faults:
    """Seeded fault injection. Each chance is a probability per request, or `Every(n)`.

    Graph requests and batch items: `server_error`, `throttle`, `accepted_but_error`, `slow`; whole HTTP
    requests only (a batch item cannot drop a connection): `reset`, `hang`. Whole `$batch` requests:
    the `batch_*` chances. Token endpoint: `token_error`. The same seed and the same sequence of
    requests give the same faults.
    """

    seed: int = 0
    server_error: Chance = 0.0
    server_error_statuses: tuple[int, ...] = (500, 502, 503, 504)
    server_error_retry_after: float = 0.5  # share of server errors that carry a Retry-After header
    throttle: Chance = 0.0
    reset: Chance = 0.0
    hang: Chance = 0.0
    accepted_but_error: Chance = 0.0
    accepted_but_error_kinds: tuple[str, ...] = ("504", "reset", "429")
    slow: Chance = 0.0
    slow_seconds: float = 5.0
    batch_server_error: Chance = 0.0
    batch_reset: Chance = 0.0
    batch_hang: Chance = 0.0
    batch_accepted_but_error: Chance = 0.0
    token_error: Chance = 0.0
    hang_seconds: float = 30.0
    retry_after_seconds: float = 2.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "Chance" and not isinstance(value, Every) and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"Faults.{f.name} must be a probability in [0, 1] or Every(n), got {value}")
        for kind in self.accepted_but_error_kinds:
            if kind not in ("504", "reset", "429"):
                raise ValueError(f"accepted_but_error_kinds: unknown kind {kind!r} (504, reset, 429)")
        for status in self.server_error_statuses:
            if not 500 <= status <= 599:
                raise ValueError(f"server_error_statuses: {status} is not a 5xx status")


@dataclass(frozen=True)
class Latency:
    """Per-request processing time: fixed, uniform between low and high, or exponential with a mean."""

    kind: Literal["fixed", "uniform", "exponential"] = "fixed"
    seconds: float = 0.0  # fixed: the latency; exponential: the mean
    low: float = 0.0
    high: float = 0.0

    @classmethod
    def fixed(cls, seconds: float) -> Latency:
        return cls("fixed", seconds=seconds)

    @classmethod
    def uniform(cls, low: float, high: float) -> Latency:
        return cls("uniform", low=low, high=high)

    @classmethod
    def exponential(cls, mean: float) -> Latency:
        return cls("exponential", seconds=mean)

    @property
    def is_zero(self) -> bool:
        return self.seconds <= 0 and self.high <= 0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        if self.kind == "exponential":
            return rng.expovariate(1.0 / self.seconds) if self.seconds > 0 else 0.0
        return self.seconds


@dataclass(frozen=True)
class AppSpec:
    """An app registration to create at start (the same arguments as `Sandbox.register_app`)."""

    tenant: str
    client_id: str
    secret: str | None = None
    certificate_pem: bytes | None = None
    application_permissions: tuple[str, ...] = ("Mail.Send", "Mail.ReadWrite")
    delegated_permissions: tuple[str, ...] = ("Mail.Send", "Mail.ReadWrite")
    admin_consent: bool = True
    public_client: bool = False
    redirect_uris: tuple[str, ...] = ()


@dataclass(frozen=True)
class MailboxSpec:
    """A mailbox (and user who can sign in) to create at start."""

    address: str
    can_send: bool = True
    rest_enabled: bool = True
    send_as_denied: bool = False
    display_name: str | None = None


@dataclass(frozen=True)
class Profile:
    """Everything that shapes how the sandbox behaves. All fields have working defaults."""

    limits: Limits = field(default_factory=Limits)
    faults: Faults = field(default_factory=Faults)
    latency: Latency | float = 0.0
    token_lifetime_seconds: int = 3600
    sent_items_delay_seconds: float = 0.0
    ndr_delay_seconds: float = 2.0
    retry_after_style: str = "integer"
    seed: int = 0
    device_code_interval: int = 1
    device_code_lifetime_seconds: int = 900
    apps: tuple[AppSpec, ...] = ()
    mailboxes: tuple[MailboxSpec, ...] = ()
    bad_recipients: tuple[str, ...] = ()
    undeliverable: tuple[str, ...] = ()
    soft_undeliverable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.latency, Latency):
            object.__setattr__(self, "latency", Latency.fixed(float(self.latency)))
        if self.retry_after_style not in RETRY_AFTER_STYLES:
            raise ValueError(
                f"retry_after_style must be one of {RETRY_AFTER_STYLES}, got {self.retry_after_style!r}"
            )
        if self.token_lifetime_seconds <= 0:
            raise ValueError("token_lifetime_seconds must be positive")

    @property
    def latency_model(self) -> Latency:
        assert isinstance(self.latency, Latency)
        return self.latency

    @classmethod
    def from_toml(cls, path: str | Path) -> Profile:
        """Load a profile from TOML; relative certificate paths are resolved against the file's folder."""
        path = Path(path)
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        return cls.from_mapping(data, base=path.parent)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], base: Path = Path()) -> Profile:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown profile keys: {sorted(unknown)}; known: {sorted(known)}")
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k not in _NESTED}
        if "limits" in data:
            kwargs["limits"] = _limits(data["limits"])
        if "faults" in data:
            kwargs["faults"] = _faults(data["faults"])
        if "latency" in data:
            kwargs["latency"] = _latency(data["latency"])
        kwargs["apps"] = tuple(_app(a, base) for a in data.get("apps", ()))
        kwargs["mailboxes"] = tuple(_mailbox(m) for m in data.get("mailboxes", ()))
        for name in ("bad_recipients", "undeliverable", "soft_undeliverable"):
            if name in data:
                kwargs[name] = tuple(data[name])
        return cls(**kwargs)


_NESTED = {"limits", "faults", "latency", "apps", "mailboxes"}


def _checked(cls: type, data: Mapping[str, Any], what: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown keys in [{what}]: {sorted(unknown)}; known: {sorted(known)}")


def _limits(data: Mapping[str, Any]) -> Limits:
    _checked(Limits, data, "limits")
    # TOML has no null: a limit of 0 or false (or the string "none") means unlimited.
    return Limits(**{k: (None if v in (0, False, "none") else int(v)) for k, v in data.items()})


def _chance(value: Any) -> Chance:
    if isinstance(value, Mapping):
        return Every(int(value["every"]))
    return float(value)


def _faults(data: Mapping[str, Any]) -> Faults:
    _checked(Faults, data, "faults")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(Faults):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.type == "Chance":
            kwargs[f.name] = _chance(value)
        elif f.name.endswith(("_statuses", "_kinds")):
            kwargs[f.name] = tuple(str(v) if f.name.endswith("_kinds") else int(v) for v in value)
        else:
            kwargs[f.name] = value
    return Faults(**kwargs)


def _latency(value: Any) -> Latency:
    if isinstance(value, Mapping):
        _checked(Latency, value, "latency")
        return Latency(**value)
    return Latency.fixed(float(value))


def _app(data: Mapping[str, Any], base: Path) -> AppSpec:
    data = dict(data)
    cert_file = data.pop("certificate_file", None)
    _checked(AppSpec, data, "apps")
    if cert_file is not None:
        data["certificate_pem"] = (base / cert_file).read_bytes()
    for key in ("application_permissions", "delegated_permissions", "redirect_uris"):
        if key in data:
            data[key] = tuple(data[key])
    return AppSpec(**data)


def _mailbox(data: Mapping[str, Any] | str) -> MailboxSpec:
    if isinstance(data, str):
        return MailboxSpec(address=data)
    _checked(MailboxSpec, data, "mailboxes")
    return MailboxSpec(**data)

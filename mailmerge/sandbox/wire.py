"""What goes over the wire: replies, Graph error bodies, Retry-After values, dates.

Graph's error shape is the same everywhere (top-level responses and batch items), so it is built in
one place: raise `GraphError` anywhere in a route and the dispatcher turns it into
`{"error": {"code", "message", "innerError": {"date", "request-id", "client-request-id"}}}`.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

JSON_TYPE = (
    "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8"
)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(obj: Any) -> bytes:
    return _dumps(obj).encode("utf-8")


def iso(t: float) -> str:
    """Graph's DateTimeOffset in UTC, whole seconds: 2024-05-01T10:00:03Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def new_request_id() -> str:
    return str(uuid.uuid4())


@dataclass(slots=True)
class Reply:
    """One answer: a status, a body (dict → JSON, bytes/str → as is, None → empty) and headers.

    `action` asks the HTTP layer to misbehave instead of answering: "reset" drops the connection,
    "hang" waits `hang_seconds` and then drops it. `fault` names the injected fault for the log.
    """

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    action: str | None = None
    fault: str | None = None
    note: dict[str, Any] | None = None  # extra, non-secret fields for the request log


@dataclass(slots=True)
class HttpRequest:
    """A request as the routes see it, whether it came over HTTP or inside a `$batch`.

    `headers` has lower-cased names. `path` is percent-decoded; `query` is the raw query string.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any  # bytes from HTTP; already-parsed JSON (or a str) from a batch item
    client_request_id: str | None = None


class GraphError(Exception):
    """A Graph error answer, raised from deep inside a route."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_reply(
    status: int,
    code: str,
    message: str,
    now: float,
    client_request_id: str | None,
    headers: dict[str, str] | None = None,
    fault: str | None = None,
) -> Reply:
    request_id = new_request_id()
    inner = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)),
        "request-id": request_id,
        "client-request-id": client_request_id or request_id,
    }
    body = {"error": {"code": code, "message": message, "innerError": inner}}
    return Reply(status, body, dict(headers or {}), fault=fault)


def from_error(exc: GraphError, now: float, client_request_id: str | None) -> Reply:
    return error_reply(exc.status, exc.code, exc.message, now, client_request_id, exc.headers)


def retry_after(seconds: float, style: str, now: float) -> str:
    """A Retry-After value in the profile's style; never zero, so a client always waits a little."""
    seconds = max(seconds, 0.001)
    if style == "fractional":
        return f"{seconds:.3f}"
    if style == "http-date":
        # An HTTP date has whole seconds: round the instant up so the client never comes back early.
        return email.utils.formatdate(math.ceil(now + seconds), usegmt=True)
    return str(max(1, math.ceil(seconds)))

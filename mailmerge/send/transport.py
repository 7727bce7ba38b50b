"""The HTTP seam: the engine speaks to Graph only through :class:`Transport`.

The real implementation uses aiohttp; tests may hand the engine any object with the same
``request`` method (a plain function returning 202, 429 or 503 is enough), and integration tests use
the real one against the emulator over HTTPS. Network failures are translated here, in one place,
into :class:`TransportError`, which says whether the request may have reached the server: that is
what decides between "retry" and "outcome unknown".
"""

from __future__ import annotations

import io
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

LARGE_BODY_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP response."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == lowered), None)


class TransportError(Exception):
    """The request got no HTTP answer.

    ``maybe_delivered`` is False only when the request certainly never reached the server (the
    connection could not be opened); a timeout or a reset after sending may hide a delivered message.
    """

    def __init__(self, kind: str, detail: str, *, maybe_delivered: bool) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.maybe_delivered = maybe_delivered


class Transport(Protocol):
    """Sends one HTTP request and returns the whole response."""

    async def request(
        self, method: str, url: str, *, headers: dict[str, str], body: bytes | None = None, timeout: float
    ) -> Response: ...

    async def close(self) -> None: ...


def ssl_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """A verifying TLS context that trusts ``ca_file``, else the CA bundle the environment names.

    Corporate TLS proxies are trusted through ``SSL_CERT_FILE`` or ``REQUESTS_CA_BUNDLE``, as with
    every other tool; without either the system's trust store is used.
    """
    cafile = ca_file or os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
    return ssl.create_default_context(cafile=str(cafile) if cafile else None)


class AiohttpTransport:
    """The real transport: one pooled aiohttp session."""

    def __init__(self, *, ca_file: str | Path | None = None, connections: int = 64) -> None:
        self._ssl = ssl_context(ca_file)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=True)
        return self._session

    async def request(
        self, method: str, url: str, *, headers: dict[str, str], body: bytes | None = None, timeout: float
    ) -> Response:
        session = self._open()
        # aiohttp streams a file-like body in chunks instead of writing megabytes in one loop step.
        data = io.BytesIO(body) if body is not None and len(body) > LARGE_BODY_BYTES else body
        try:
            async with session.request(
                method, url, headers=headers, data=data, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as answer:
                payload = await answer.read()
                return Response(answer.status, dict(answer.headers), payload)
        except aiohttp.ClientConnectorError as exc:
            raise TransportError("connect", str(exc.os_error or exc), maybe_delivered=False) from exc
        except TimeoutError as exc:
            raise TransportError("timeout", f"no answer within {timeout:g} s", maybe_delivered=True) from exc
        except aiohttp.ClientError as exc:
            raise TransportError("connection", exc.__class__.__name__, maybe_delivered=True) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

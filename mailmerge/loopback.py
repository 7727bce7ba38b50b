"""The local end of a browser sign-in: a one-shot HTTP listener on ``http://localhost:PORT``.

Entra ID sends the browser back to the loopback redirect URI with ``code`` and ``state`` (or
``error``): as a form the browser POSTs (``response_mode=form_post``, which mailmerge asks for, so the
code never sits in a URL or the browser's history) or in the query of a GET. This listener takes that
one answer, shows a short page, and hands the parameters to msal. It binds to 127.0.0.1 only, never
logs (the request carries the authorization code), and ignores any other request (a favicon, a scan).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mailmerge.errors import AuthError

MAX_FORM_BYTES = 64 * 1024
DONE_PAGE = (
    b"<!doctype html><html><head><meta charset='utf-8'><title>mailmerge</title></head><body>"
    b"<p>%s</p><p>You can close this tab and go back to the terminal.</p></body></html>"
)


class RedirectListener:
    """Listens until the first request that carries an OAuth answer (``code`` or ``error``)."""

    def __init__(self, port: int = 0) -> None:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._take(urlsplit(self.path).query)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_FORM_BYTES:
                    self.send_error(413)
                    return
                self._take(self.rfile.read(length).decode("utf-8", "replace"))

            def _take(self, encoded: str) -> None:
                params = dict(parse_qsl(encoded, keep_blank_values=True))
                if "code" not in params and "error" not in params:
                    self.send_error(404)
                    return
                message = b"Signed in." if "code" in params else b"Sign-in failed."
                body = DONE_PAGE % message
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                listener._answer(params)

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: the request line holds the authorization code."""

        try:
            self._server = HTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise AuthError(
                f"cannot listen on http://localhost:{port} for the sign-in answer ({exc.strerror or exc})",
                context="[auth] redirect_port",
                hint="choose another port, or 0 for any free one",
            ) from exc
        self.port = int(self._server.server_address[1])
        self._done = threading.Event()
        self._params: dict[str, str] = {}
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def redirect_uri(self) -> str:
        return f"http://localhost:{self.port}"

    def _answer(self, params: dict[str, str]) -> None:
        if not self._done.is_set():
            self._params = params
            self._done.set()

    def __enter__(self) -> RedirectListener:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def wait(self, timeout: float) -> dict[str, str]:
        """The query of the redirect (``code``, ``state``, ... or ``error``, ``error_description``)."""
        if not self._done.wait(timeout):
            raise AuthError(
                f"no sign-in answer reached {self.redirect_uri} within {timeout:g} s",
                hint="finish the sign-in in the browser (if none opened, open the address shown); if the "
                "page shows AADSTS50011, add http://localhost as a redirect URI of the platform 'Mobile "
                "and desktop applications' under Authentication",
            )
        return dict(self._params)

"""The `Sandbox`: one HTTPS server on loopback that is both Entra ID and Microsoft Graph.

It runs either in a background thread with its own event loop (`start`/`stop`, or `with`) or inside
the caller's loop (`await start_async()` / `await stop_async()`). All state lives on the server's
loop; the setup and inspection methods that other threads call (`register_app`, `delivered`,
`set_faults`, ...) either assign a single attribute or take the mail store's lock.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from . import tls
from .authority import Authority
from .batch import BatchItem, BatchRunner, parse_batch
from .clock import Clock, SystemClock
from .directory import stable_id
from .graph import Graph, Prepared
from .mailstore import DeliveredMessage
from .outbox import Outbox
from .profile import Faults, Limits, Profile
from .state import SandboxState
from .wire import JSON_TYPE, GraphError, HttpRequest, Reply, dumps, from_error, new_request_id

DEFAULT_APP_PERMISSIONS = ("Mail.Send", "Mail.ReadWrite")
# Bodies larger than this are refused before they are read; Graph's own limit (413) is checked after.
_HARD_BODY_CAP = 64 * 1024 * 1024
_LOG_FIELDS = (
    "time",
    "method",
    "path",
    "status",
    "mailbox",
    "batch",
    "item",
    "fault",
    "request_id",
    "client_request_id",
)


class Sandbox:
    """A local, faithful emulator of Entra ID and Graph's mail API. See docs/sandbox.md."""

    def __init__(
        self,
        profile: Profile | None = None,
        outbox: Path | str | None = None,
        clock: Clock | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        on_request: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.profile = profile or Profile()
        self.clock: Clock = clock or SystemClock()
        self.outbox_path = Path(outbox) if outbox is not None else None
        self._host, self._port = host, port
        self._on_request = on_request
        self._state = SandboxState(
            self.profile, self.clock, Outbox(self.outbox_path) if self.outbox_path else None
        )
        self._authority = Authority(self._state)
        self._graph = Graph(self._state)
        self._batch = BatchRunner(self._graph)
        self._log: list[tuple[Any, ...]] = []
        self._runner: web.ServerRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ca_file: Path | None = None
        self._hanging: set[asyncio.Task[Any]] = set()
        # Every connection that carried a request: aborted at stop, because closing a TLS connection
        # waits for the peer's close_notify, which a stopped loop would never receive.
        self._transports: weakref.WeakSet[asyncio.Transport] = weakref.WeakSet()
        self._apply_profile(self.profile)

    def _apply_profile(self, profile: Profile) -> None:
        for app in profile.apps:
            self.register_app(
                app.tenant,
                app.client_id,
                app.secret,
                app.certificate_pem,
                app.application_permissions,
                app.delegated_permissions,
                app.admin_consent,
                app.public_client,
                app.redirect_uris,
            )
        for mailbox in profile.mailboxes:
            self.add_mailbox(
                mailbox.address,
                mailbox.can_send,
                mailbox.rest_enabled,
                mailbox.send_as_denied,
                mailbox.display_name,
            )
        for address in profile.bad_recipients:
            self.add_bad_recipient(address)
        for address in profile.undeliverable:
            self.add_undeliverable(address, hard=True)
        for address in profile.soft_undeliverable:
            self.add_undeliverable(address, hard=False)

    # -- addresses -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def authority_host(self) -> str:
        return self._state.host

    @property
    def graph_base_url(self) -> str:
        return self._state.graph_base

    @property
    def ca_file(self) -> Path:
        if self._ca_file is None:
            raise RuntimeError("the sandbox is not started: its CA file does not exist yet")
        return self._ca_file

    # -- directory setup -------------------------------------------------------------------------
    def register_app(
        self,
        tenant: str,
        client_id: str,
        secret: str | None = None,
        certificate_pem: bytes | None = None,
        application_permissions: tuple[str, ...] = DEFAULT_APP_PERMISSIONS,
        delegated_permissions: tuple[str, ...] = DEFAULT_APP_PERMISSIONS,
        admin_consent: bool = True,
        public_client: bool = False,
        redirect_uris: tuple[str, ...] = (),
    ) -> None:
        """Register an app in `tenant` (created on first use) with the permissions an admin granted."""
        self._state.directory.register_app(
            tenant,
            client_id,
            secret,
            certificate_pem,
            tuple(application_permissions),
            tuple(delegated_permissions),
            admin_consent,
            public_client,
            tuple(redirect_uris),
        )

    def add_mailbox(
        self,
        address: str,
        can_send: bool = True,
        rest_enabled: bool = True,
        send_as_denied: bool = False,
        display_name: str | None = None,
    ) -> None:
        """A mailbox that can send, and a user who can sign in with the delegated flows."""
        self._state.directory.add_mailbox(address, can_send, rest_enabled, send_as_denied, display_name)

    def add_bad_recipient(self, address: str) -> None:
        """sendMail to this address fails with 400 ErrorInvalidRecipients."""
        self._state.bad_recipients.add(address.lower())

    def add_undeliverable(self, address: str, hard: bool = True) -> None:
        """Mail to this address is accepted (202) and then bounces: an NDR lands in the sender's Inbox."""
        self._state.store.undeliverable[address.lower()] = hard

    def approve_device_code(self, user_code: str, user: str) -> None:
        """What the user would do in a browser: sign in as `user` and enter `user_code`."""
        self._state.directory.approve_device_code(user_code, user)

    def set_faults(self, faults: Faults) -> None:
        self._state.set_faults(faults)

    def set_limits(self, limits: Limits) -> None:
        self._state.set_limits(limits)

    # -- inspection ------------------------------------------------------------------------------
    def delivered(self) -> list[DeliveredMessage]:
        """Every message accepted for delivery, in acceptance order (restored ones first)."""
        return self._state.store.snapshot()

    def request_log(self) -> list[dict[str, Any]]:
        """Every request answered (and every batch item), oldest first. Never bodies or credentials."""
        return [_log_dict(entry) for entry in list(self._log)]

    # -- lifecycle -------------------------------------------------------------------------------
    async def start_async(self) -> None:
        """Load the outbox (if any), then listen. On failure nothing is left open."""
        try:
            await self._start()
        except BaseException:
            await self.stop_async()
            raise

    async def _start(self) -> None:
        state = self._state
        outbox = state.outbox
        if outbox is not None:
            outbox.open()
            for record in outbox.load_delivered():
                state.store.restore(record)
                # the daily recipient budget outlives a restart, as Exchange's does
                mailbox_id = stable_id("user", record.mailbox)
                state.throttle.record_message(mailbox_id, len(record.recipients), record.accepted_at)
            for draft in outbox.load_drafts():
                state.store.file(draft)
            state.store.on_accept = outbox.write_delivered
            ca = tls.load_or_create_ca(outbox.root)
            self._ca_file = outbox.root / tls.CA_CERT_NAME
        else:
            ca = tls.load_or_create_ca(None)
            self._tmp = tempfile.TemporaryDirectory(prefix="mailmerge-sandbox-")
            self._ca_file = tls.write_ca(ca, Path(self._tmp.name) / tls.CA_CERT_NAME)
        server = web.Server(self._handle, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._host, self._port, ssl_context=tls.server_context(ca), backlog=512
        )
        await site.start()
        self._port = self._runner.addresses[0][1]
        state.host = f"https://{self._host}:{self._port}"
        state.graph_base = f"{state.host}/v1.0"

    async def stop_async(self) -> None:
        for task in list(self._hanging):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for transport in list(self._transports):
            transport.abort()
        await asyncio.sleep(0)  # let the aborted transports close their sockets
        if self._state.outbox is not None:
            self._state.outbox.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def start(self) -> Sandbox:
        """Start in a background thread with its own loop; returns once the server listens."""
        if self._thread is not None:
            raise RuntimeError("the sandbox is already running")
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                _drain(loop)

        self._thread = threading.Thread(target=main, name="mailmerge-sandbox", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.stop_async(), self._loop)
        future.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- HTTP ------------------------------------------------------------------------------------
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        state = self._state
        started = state.clock.time()
        path, _, query = request.raw_path.partition("?")
        headers = {k.lower(): v for k, v in request.headers.items()}
        client_request_id = headers.get("client-request-id")
        request_id = new_request_id()
        mailbox: str | None = None
        if request.transport is not None:
            self._transports.add(request.transport)
        if request.content_length is not None and request.content_length > _HARD_BODY_CAP:
            reply = self._too_large(request.content_length, started, client_request_id)
        else:
            body = await request.content.read()
            req = HttpRequest(request.method, path, query, headers, body, client_request_id)
            if path == "/v1.0" or path.startswith("/v1.0/"):
                reply, mailbox = await self._graph_request(req, request_id, started)
            elif path.startswith("/upload/"):
                reply, mailbox = await self._run(
                    self._graph.uploads.handle(req, path[len("/upload/") :]), req
                )
            else:
                latency = state.latency()
                if latency > 0:
                    await state.clock.sleep(latency)
                reply = await self._authority.handle(req)
        self._record(started, request.method, path, reply, mailbox, None, None, request_id, client_request_id)
        return await self._respond(request, reply, request_id, client_request_id)

    async def _run(self, prepared: Prepared | Reply, req: HttpRequest) -> tuple[Reply, str | None]:
        if isinstance(prepared, Reply):
            return prepared, None
        return await prepared.run(req.client_request_id), prepared.mailbox

    async def _graph_request(
        self, req: HttpRequest, request_id: str, started: float
    ) -> tuple[Reply, str | None]:
        state, graph = self._state, self._graph
        try:
            token = graph.authenticate(req)
            limit = state.throttle.limits.max_request_bytes
            if limit is not None and len(req.body) > limit:
                return self._too_large(len(req.body), started, req.client_request_id), None
        except GraphError as exc:
            return graph.error(exc, req.client_request_id), None
        req.path = req.path[len("/v1.0") :]
        if req.path.lower() in ("/$batch", "/%24batch"):
            return await self._batch_request(req, token, request_id, started), None
        return await self._run(graph.prepare(req, token, "request"), req)

    async def _batch_request(self, req: HttpRequest, token: Any, request_id: str, started: float) -> Reply:
        state, graph = self._state, self._graph
        try:
            if req.method != "POST":
                raise GraphError(405, "MethodNotAllowed", "$batch takes POST.")
            if req.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
                raise GraphError(415, "UnsupportedMediaType", "$batch takes 'application/json'.")
            items = parse_batch(req.body)
        except GraphError as exc:
            return graph.error(exc, req.client_request_id)
        plan = state.plan
        fault = plan.decide("batch") if plan.active("batch") else None
        if fault is not None and fault.kind == "server_error":
            status = int(fault.pick(plan.faults.server_error_statuses))
            retry = (
                {"Retry-After": state.retry_after(plan.faults.retry_after_seconds)}
                if fault.extra < plan.faults.server_error_retry_after
                else {}
            )
            return graph.error(
                GraphError(status, "ServiceUnavailable", "The service is temporarily unavailable.", retry),
                req.client_request_id,
                fault="batch_server_error",
            )
        if fault is not None and fault.kind in ("reset", "hang"):
            return Reply(0, action=fault.kind, fault=f"batch_{fault.kind}")

        def log(item: BatchItem, reply: Reply, mailbox: str | None) -> None:
            self._record(
                started,
                item.request.method,
                item.request.path,
                reply,
                mailbox,
                request_id,
                item.id,
                None,
                item.request.client_request_id,
            )

        responses, _ = await self._batch.run(items, token, fault, log)
        if fault is not None and fault.kind == "accepted_but_error":
            kind = fault.pick(("504", "reset", "hang"))
            if kind == "504":
                return graph.error(
                    GraphError(
                        504,
                        "GatewayTimeout",
                        "The gateway did not receive a timely response from the upstream server.",
                    ),
                    req.client_request_id,
                    fault="batch_accepted_but_504",
                )
            return Reply(0, action=str(kind), fault=f"batch_accepted_but_{kind}")
        return Reply(200, {"responses": responses})

    def _too_large(self, size: int, now: float, client_request_id: str | None) -> Reply:
        limit = self._state.throttle.limits.max_request_bytes or _HARD_BODY_CAP
        return from_error(
            GraphError(
                413,
                "RequestEntityTooLarge",
                f"The request body is {size} bytes; the maximum request length is {limit} "
                "bytes. Send large attachments through an upload session.",
            ),
            now,
            client_request_id,
        )

    async def _respond(
        self, request: web.BaseRequest, reply: Reply, request_id: str, client_request_id: str | None
    ) -> web.StreamResponse:
        if reply.action is not None:
            if reply.action == "hang":
                task = asyncio.current_task()
                if task is not None:
                    self._hanging.add(task)
                try:
                    await self._state.clock.sleep(self._state.plan.faults.hang_seconds)
                except asyncio.CancelledError:
                    pass
                finally:
                    self._hanging.discard(task)  # type: ignore[arg-type]
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        headers = dict(reply.headers)
        headers["request-id"] = request_id
        headers["client-request-id"] = client_request_id or request_id
        body = reply.body
        if isinstance(body, (dict, list)):
            data = dumps(body)
            headers.setdefault("Content-Type", JSON_TYPE)
        elif isinstance(body, str):
            data = body.encode("utf-8")
            headers.setdefault("Content-Type", reply.content_type or "text/plain; charset=utf-8")
        else:
            data = body or b""
        return web.Response(status=reply.status, body=data, headers=headers)

    def _record(
        self,
        started: float,
        method: str,
        path: str,
        reply: Reply,
        mailbox: str | None,
        batch: str | None,
        item: str | None,
        request_id: str | None,
        client_request_id: str | None,
    ) -> None:
        entry = (
            started,
            method,
            path,
            reply.status if reply.action is None else None,
            mailbox,
            batch,
            item,
            reply.fault,
            request_id,
            client_request_id,
            reply.note,
        )
        self._log.append(entry)
        outbox = self._state.outbox
        if outbox is not None or self._on_request is not None:
            data = _log_dict(entry)
            if outbox is not None:
                outbox.log(data)
            if self._on_request is not None:
                self._on_request(data)


def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Close a stopped loop without leaking sockets: connections still being accepted or shaking hands
    are tasks and close callbacks that must run before the loop goes."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def _log_dict(entry: tuple[Any, ...]) -> dict[str, Any]:
    data = dict(zip(_LOG_FIELDS, entry, strict=False))
    note = entry[-1]
    if note:
        data.update(note)
    return data

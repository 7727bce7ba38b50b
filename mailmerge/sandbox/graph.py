"""Graph's mail routes: sendMail, drafts and their sending, folder listings (upload sessions are in
uploads.py, `$batch` in batch.py).

A request goes through `prepare` (synchronous: bearer token, route, mailbox, permission, injected
fault, throttling slots) and then `Prepared.run` (latency, the operation itself, accepted-but-error
faults). The split lets `$batch` take the concurrency slots of all items that start together before
any of them runs, which is how Outlook's per-mailbox concurrency limit bites inside one batch.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .directory import AccessToken, Mailbox
from .faults import Fault
from .mailstore import StoredItem, new_internet_message_id, new_item_id
from .query import message_resource, next_link, parse_query, run_query
from .state import SandboxState
from .throttle import AppKey, Verdict
from .uploads import Uploads
from .validation import (
    body_read_error,
    check_headers,
    check_sendable,
    message_from_mime,
    normalise_message,
    parse_json,
)
from .wire import GraphError, HttpRequest, Reply, from_error

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_FOLDER = re.compile(r"^mailFolders(?:\('([^']*)'\))?$", re.IGNORECASE)
_WELL_KNOWN = {"inbox": "inbox", "sentitems": "sentitems", "drafts": "drafts"}
ACCESS_DENIED = "Access is denied. Check credentials and try again."
SEND = ("Mail.Send",)
READ_WRITE = ("Mail.ReadWrite",)
READ = ("Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic.All")

Operation = Callable[[], Awaitable[Reply]]


@dataclass(slots=True)
class Route:
    """What a path asks for: the operation name, the mailbox key, a folder and a message id."""

    op: str
    user: str | None  # None: /me
    folder: str | None = None
    message_id: str | None = None


class Prepared:
    """A request that passed the synchronous checks and holds its concurrency slot."""

    __slots__ = ("app_key", "fault", "graph", "latency", "mailbox", "operation", "state")

    def __init__(
        self,
        graph: Graph,
        operation: Operation,
        app_key: AppKey | None,
        fault: Fault | None,
        latency: float,
        mailbox: str,
    ) -> None:
        self.graph, self.state = graph, graph.state
        self.operation, self.app_key, self.fault, self.latency, self.mailbox = (
            operation,
            app_key,
            fault,
            latency,
            mailbox,
        )

    async def run(self, client_request_id: str | None) -> Reply:
        state = self.state
        try:
            if self.latency > 0:
                await state.clock.sleep(self.latency)
            try:
                reply = await self.operation()
            except GraphError as exc:
                reply = self.graph.error(exc, client_request_id)
        finally:
            if self.app_key is not None:
                state.throttle.leave(self.app_key)
        fault = self.fault
        if fault is not None and fault.kind == "accepted_but_error" and reply.status < 300:
            kind = str(fault.pick(state.plan.faults.accepted_but_error_kinds))
            if kind == "reset":
                return Reply(0, action="reset", fault="accepted_but_reset")
            if kind == "429":
                seconds = state.plan.faults.retry_after_seconds
                return self.graph.error(
                    GraphError(
                        429,
                        "TooManyRequests",
                        "Too many requests, retry later.",
                        {"Retry-After": state.retry_after(seconds)},
                    ),
                    client_request_id,
                    fault="accepted_but_429",
                )
            return self.graph.error(
                GraphError(
                    504,
                    "GatewayTimeout",
                    "The gateway did not receive a timely response from the upstream server.",
                ),
                client_request_id,
                fault="accepted_but_504",
            )
        if fault is not None and fault.kind == "slow":
            reply.fault = "slow"
        return reply


class Graph:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.uploads = Uploads(self)

    def error(self, exc: GraphError, client_request_id: str | None, fault: str | None = None) -> Reply:
        reply = from_error(exc, self.state.clock.time(), client_request_id)
        reply.fault = fault
        return reply

    # -- authentication --------------------------------------------------------------------------
    def authenticate(self, req: HttpRequest) -> AccessToken:
        header = req.headers.get("authorization", "")
        if not header:
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty.")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure: the Authorization header must be 'Bearer <token>'.",
            )
        info = self.state.directory.tokens.get(token.strip())
        if info is None:
            raise GraphError(
                401,
                "InvalidAuthenticationToken",
                "IDX14100: JWT is not well formed, or was not issued by this tenant's authority.",
            )
        if self.state.clock.time() >= info.expires_at:
            raise GraphError(
                401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."
            )
        return info

    # -- routing ---------------------------------------------------------------------------------
    @staticmethod
    def route(method: str, path: str) -> Route:
        """`path` is relative to /v1.0, still percent-encoded (ids may contain an encoded '/')."""
        segments = [urllib.parse.unquote(s) for s in path.strip("/").split("/")]
        if segments and segments[0].lower() == "me":
            user, rest = None, segments[1:]
        elif len(segments) >= 2 and segments[0].lower() == "users":
            user, rest = segments[1], segments[2:]
        else:
            raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segments[0]}'.")
        lowered = [s.lower() for s in rest]
        folder = None
        if rest:
            m = _FOLDER.match(rest[0])
            if m is not None:
                name = m.group(1)
                if name is None:
                    if len(rest) < 2:
                        raise GraphError(400, "BadRequest", "Listing mail folders is not emulated.")
                    name, rest, lowered = rest[1], rest[1:], lowered[1:]
                folder = _WELL_KNOWN.get(name.lower())
                if folder is None:
                    raise GraphError(
                        404, "ErrorItemNotFound", "The specified folder could not be found in the store."
                    )
                rest, lowered = rest[1:], lowered[1:]
        if lowered == ["sendmail"] and folder is None:
            return _expect(method, "POST", Route("sendMail", user))
        if lowered == ["messages"]:
            if method == "POST" and folder in (None, "drafts"):
                return Route("createDraft", user)
            return _expect(method, "GET", Route("list", user, folder))
        if len(rest) == 2 and lowered[0] == "messages":
            return _expect(method, "GET", Route("get", user, folder, rest[1]))
        if len(rest) == 3 and lowered[0] == "messages" and lowered[2] == "send":
            return _expect(method, "POST", Route("send", user, folder, rest[1]))
        if (
            len(rest) == 4
            and lowered[0] == "messages"
            and lowered[2:] == ["attachments", "createuploadsession"]
        ):
            return _expect(method, "POST", Route("createUploadSession", user, folder, rest[1]))
        last = rest[-1] if rest else (user or "me")
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{last}'.")

    def mailbox_for(self, route: Route, token: AccessToken, sending: bool) -> Mailbox:
        if route.user is None:
            if token.user is None:
                raise GraphError(
                    400, "BadRequest", "/me request is only valid with delegated authentication flow."
                )
            mailbox = token.user
        else:
            if "@" not in route.user and not _GUID.match(route.user):
                raise GraphError(400, "ErrorInvalidUser", f"The requested user '{route.user}' is invalid.")
            found = self.state.directory.mailbox(route.user)
            if found is None:
                raise GraphError(
                    404,
                    "MailboxNotEnabledForRESTAPI",
                    "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
                )
            mailbox = found
        if not mailbox.rest_enabled:
            raise GraphError(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        if token.user is not None and token.user is not mailbox:
            if sending:
                raise GraphError(
                    403,
                    "ErrorSendAsDenied",
                    "The user account which was used to submit this request does not have the right "
                    "to send mail on behalf of the specified sending account., Cannot submit message.",
                )
            raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
        return mailbox

    # -- prepare ---------------------------------------------------------------------------------
    def prepare(self, req: HttpRequest, token: AccessToken, site: str) -> Prepared | Reply:
        """Everything up to the operation; a Reply when the request ends here."""
        try:
            route = self.route(req.method, req.path)
            sending = route.op in ("sendMail", "send")
            mailbox = self.mailbox_for(route, token, sending)
            needed = (
                SEND
                if sending
                else READ_WRITE
                if route.op in ("createDraft", "createUploadSession")
                else READ
            )
            if not token.has_any(*needed):
                raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
            if sending and not mailbox.can_send:
                raise GraphError(403, "ErrorAccessDenied", ACCESS_DENIED)
            if sending and mailbox.send_as_denied:
                raise GraphError(
                    403,
                    "ErrorSendAsDenied",
                    "The user account which was used to submit this request does not have the right "
                    "to send mail on behalf of the specified sending account., Cannot submit message.",
                )
            operation = self._operation(route, req, token, mailbox)
            return self.admit(req, site, token.app.client_id, mailbox, operation)
        except GraphError as exc:
            return self.error(exc, req.client_request_id)

    def admit(
        self, req: HttpRequest, site: str, app_id: str, mailbox: Mailbox, operation: Operation
    ) -> Prepared | Reply:
        """Injected faults and throttling, then a concurrency slot: the gate every mail request passes.

        Throttling is per app (`app_id`) per mailbox."""
        state = self.state
        plan = state.plan
        fault = plan.decide(site) if plan.active(site) else None
        latency = state.latency()
        if fault is not None:
            faults = plan.faults
            if fault.kind == "server_error":
                status = int(fault.pick(faults.server_error_statuses))
                headers = (
                    {"Retry-After": state.retry_after(faults.retry_after_seconds)}
                    if fault.extra < faults.server_error_retry_after
                    else {}
                )
                code = {
                    500: "InternalServerError",
                    502: "BadGateway",
                    503: "ServiceUnavailable",
                    504: "GatewayTimeout",
                }.get(status, "InternalServerError")
                return self.error(
                    GraphError(status, code, "The service is temporarily unavailable.", headers),
                    req.client_request_id,
                    fault="server_error",
                )
            if fault.kind == "throttle":
                headers = {"Retry-After": state.retry_after(faults.retry_after_seconds)}
                return self.error(
                    GraphError(429, "TooManyRequests", "Too many requests, retry later.", headers),
                    req.client_request_id,
                    fault="throttle",
                )
            if fault.kind in ("reset", "hang"):
                return Reply(0, action=fault.kind, fault=fault.kind)
            if fault.kind == "slow":
                latency += faults.slow_seconds
        key = (app_id, mailbox.id)
        throttle = state.throttle
        if throttle.limits.concurrent_requests is not None:
            verdict = throttle.enter(key)
            if verdict is not None:
                return self._throttled(verdict, req)
            held: AppKey | None = key
        else:
            held = None
        verdict = throttle.request(key, state.clock.time())
        if verdict is not None:
            if held is not None:
                throttle.leave(held)
            return self._throttled(verdict, req)
        return Prepared(self, operation, held, fault, latency, mailbox.address)

    def _throttled(self, verdict: Verdict, req: HttpRequest) -> Reply:
        headers = (
            {}
            if verdict.retry_after is None
            else {"Retry-After": self.state.retry_after(verdict.retry_after)}
        )
        return self.error(
            GraphError(verdict.status, verdict.code, verdict.message, headers), req.client_request_id
        )

    def _operation(self, route: Route, req: HttpRequest, token: AccessToken, mailbox: Mailbox) -> Operation:
        op = route.op
        if op == "sendMail":
            return lambda: self.send_mail(req, token, mailbox)
        if op == "createDraft":
            return lambda: self.create_draft(req, mailbox)
        if op == "send":
            return lambda: self.send_draft(route, token, mailbox)
        if op == "createUploadSession":
            return lambda: self.uploads.create_session(self._item(route, mailbox), req, token, mailbox)
        if op == "get":
            return lambda: self.get_message(route, req, mailbox)
        return lambda: self.list_messages(route, req, mailbox)

    # -- sending ---------------------------------------------------------------------------------
    async def send_mail(self, req: HttpRequest, token: AccessToken, mailbox: Mailbox) -> Reply:
        state = self.state
        content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "text/plain":
            message, headers = message_from_mime(req.body)
            addresses = check_sendable(
                message,
                mailbox.address,
                state.throttle.limits.max_recipients_per_message,
                state.bad_recipients,
                mime=True,
            )
            return self._submit(mailbox, message, addresses, headers, "mime", True, token)
        if content_type != "application/json":
            raise GraphError(
                415,
                "UnsupportedMediaType",
                "sendMail takes 'application/json' (a message) or 'text/plain' (base64 MIME); "
                f"the request's Content-Type was '{content_type or 'missing'}'.",
            )
        params = parse_json(req.body)
        if not isinstance(params, dict):
            raise body_read_error("The sendMail payload must be a JSON object with a 'Message' parameter.")
        raw_message, save = None, True
        for key, value in params.items():
            low = key.lower()
            if low == "message":
                raw_message = value
            elif low == "savetosentitems":
                if value is not None and not isinstance(value, bool):
                    raise body_read_error(
                        f"Cannot convert the literal '{value}' to the expected type 'Edm.Boolean'."
                    )
                save = True if value is None else value
            elif not key.startswith("@odata."):
                raise body_read_error(
                    f"The parameter '{key}' in the request payload is not a valid parameter "
                    "for the operation 'sendMail'."
                )
        if raw_message is None:
            raise body_read_error(
                "The parameter 'Message' in the request payload is required and cannot be null."
            )
        message = normalise_message(raw_message)
        addresses = check_sendable(
            message, mailbox.address, state.throttle.limits.max_recipients_per_message, state.bad_recipients
        )
        headers = {h["name"]: h["value"] for h in message.get("internetMessageHeaders", ())}
        return self._submit(mailbox, message, addresses, headers, "sendMail", save, token)

    def _submit(
        self,
        mailbox: Mailbox,
        message: dict[str, Any],
        addresses: list[str],
        headers: dict[str, str],
        via: str,
        save: bool,
        token: AccessToken,
        sent_item_id: str | None = None,
    ) -> Reply:
        state = self.state
        now = state.clock.time()
        verdict = state.throttle.message(mailbox.id, len(addresses), now)
        if verdict is not None:
            headers_out = (
                {} if verdict.retry_after is None else {"Retry-After": state.retry_after(verdict.retry_after)}
            )
            raise GraphError(verdict.status, verdict.code, verdict.message, headers_out)
        state.throttle.record_message(mailbox.id, len(addresses), now)
        state.store.accept(
            mailbox.address, message, addresses, headers, via, now, save, token.app.client_id, sent_item_id
        )
        return Reply(202)

    # -- drafts ----------------------------------------------------------------------------------
    async def create_draft(self, req: HttpRequest, mailbox: Mailbox) -> Reply:
        if req.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise GraphError(415, "UnsupportedMediaType", "Creating a message takes 'application/json'.")
        message = normalise_message(parse_json(req.body))
        check_headers(message)
        now = self.state.clock.time()
        immutable = "immutableid" in req.headers.get("prefer", "").replace(" ", "").replace('"', "").lower()
        item = StoredItem(
            id=new_item_id(),
            mailbox=mailbox.address.lower(),
            folder="drafts",
            message=message,
            created_at=now,
            visible_at=now,
            internet_message_id=message.get("internetMessageId") or new_internet_message_id(),
            is_draft=True,
            immutable=immutable,
        )
        self.state.store.file(item)
        if self.state.outbox is not None:
            self.state.outbox.write_draft(item)
        body = {
            "@odata.context": _entity_context(self.state.graph_base, mailbox),
            **message_resource(item, _sender(mailbox), None),
        }
        headers = {"Preference-Applied": 'IdType="ImmutableId"'} if immutable else {}
        headers["Location"] = (
            f"{self.state.graph_base}/users/{mailbox.id}/messages/{urllib.parse.quote(item.id)}"
        )
        return Reply(201, body, headers)

    def _item(self, route: Route, mailbox: Mailbox) -> StoredItem:
        item = self.state.store.items.get(route.message_id or "")
        if (
            item is None
            or item.mailbox != mailbox.address.lower()
            or (route.folder and item.folder != route.folder)
        ):
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return item

    async def send_draft(self, route: Route, token: AccessToken, mailbox: Mailbox) -> Reply:
        state = self.state
        item = self._item(route, mailbox)
        if not item.is_draft:
            raise GraphError(
                400, "ErrorInvalidOperation", "The message has already been sent: only a draft can be sent."
            )
        message = dict(item.message)
        addresses = check_sendable(
            message, mailbox.address, state.throttle.limits.max_recipients_per_message, state.bad_recipients
        )
        if item.uploads:
            message["attachments"] = [
                *message.get("attachments", ()),
                *(_attachment_json(u) for u in item.uploads),
            ]
        message["internetMessageId"] = item.internet_message_id
        headers = {h["name"]: h["value"] for h in message.get("internetMessageHeaders", ())}
        reply = self._submit(
            mailbox,
            message,
            addresses,
            headers,
            "draft-send",
            True,
            token,
            item.id if item.immutable else None,
        )
        state.store.unfile(item)
        if state.outbox is not None:
            state.outbox.delete_draft(item)
        return reply

    # -- reading ---------------------------------------------------------------------------------
    async def get_message(self, route: Route, req: HttpRequest, mailbox: Mailbox) -> Reply:
        item = self._item(route, mailbox)
        query = parse_query(req.query)
        body = {
            "@odata.context": _entity_context(self.state.graph_base, mailbox),
            **message_resource(item, _sender(mailbox), query),
        }
        return Reply(200, body)

    async def list_messages(self, route: Route, req: HttpRequest, mailbox: Mailbox) -> Reply:
        state = self.state
        query = parse_query(req.query)
        address = mailbox.address.lower()
        store = state.store
        folders = [route.folder] if route.folder else ["inbox", "sentitems", "drafts"]
        if query.ext_lookup is not None and "drafts" not in folders:
            key, value = query.ext_lookup
            candidates = [i for i in store.ext_index.get((address, key, value), ()) if i.folder in folders]
        else:
            candidates = [i for f in folders for i in store.folder(address, f)]
        page, more = run_query(query, candidates, state.clock.time())
        sender = _sender(mailbox)
        body: dict[str, Any] = {
            "@odata.context": f"{state.graph_base}/$metadata#users('{mailbox.address}')/messages",
            "value": [message_resource(i, sender, query) for i in page],
        }
        if more:
            path = req.path if req.path.startswith("/") else "/" + req.path
            body["@odata.nextLink"] = next_link(state.graph_base + path, query)
        return Reply(200, body)


def _expect(method: str, wanted: str, route: Route) -> Route:
    if method != wanted:
        raise GraphError(405, "MethodNotAllowed", f"{method} is not allowed here; use {wanted}.")
    return route


def _entity_context(graph_base: str, mailbox: Mailbox) -> str:
    return f"{graph_base}/$metadata#users('{mailbox.address}')/messages/$entity"


def _sender(mailbox: Mailbox) -> dict[str, Any]:
    return {"emailAddress": {"name": mailbox.display_name, "address": mailbox.address}}


def _attachment_json(upload: dict[str, Any]) -> dict[str, Any]:
    out = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        **{k: v for k, v in upload.items() if k != "content" and v is not None},
    }
    out["contentBytes"] = base64.b64encode(upload["content"]).decode("ascii")
    return out

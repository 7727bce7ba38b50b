"""Upload sessions: how attachments of 3 MB to 150 MB reach a draft.

`createUploadSession` answers with an upload URL that carries its own token (no bearer: a request that
sends one is refused); the bytes then arrive in order, at most 4 MiB per PUT, with
`Content-Range: bytes START-END/TOTAL`. Each chunk passes the same fault and throttling gate as any
Graph request, and counts against the app's upload budget for the mailbox.
"""

from __future__ import annotations

import re
import secrets
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

from .directory import AccessToken, Mailbox
from .mailstore import StoredItem, UploadSession
from .validation import INLINE_ATTACHMENT_LIMIT, body_read_error, parse_json, read_object
from .wire import GraphError, HttpRequest, Reply

if TYPE_CHECKING:
    from .graph import Graph, Prepared

UPLOAD_CHUNK_LIMIT = 4 * 1024 * 1024
UPLOAD_MAX_SIZE = 150 * 1024 * 1024
UPLOAD_SESSION_LIFETIME = 30 * 60.0


class Uploads:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.state = graph.state

    async def create_session(
        self, item: StoredItem, req: HttpRequest, token: AccessToken, mailbox: Mailbox
    ) -> Reply:
        """`POST .../messages/{id}/attachments/createUploadSession` on a draft."""
        state = self.state
        if not item.is_draft:
            raise GraphError(400, "ErrorInvalidOperation", "Attachments can be added to drafts only.")
        params = parse_json(req.body)
        raw = (
            next((v for k, v in params.items() if k.lower() == "attachmentitem"), None)
            if isinstance(params, dict)
            else None
        )
        if raw is None:
            raise body_read_error("The parameter 'AttachmentItem' in the request payload is required.")
        attachment = read_object(raw, "attachmentItem")
        if attachment.get("attachmentType", "file") != "file":
            raise GraphError(400, "ErrorInvalidAttachmentType", "Upload sessions take attachmentType 'file'.")
        size = attachment.get("size")
        if not attachment.get("name") or not isinstance(size, int):
            raise body_read_error("AttachmentItem needs a name and a size.")
        if size < INLINE_ATTACHMENT_LIMIT:
            raise GraphError(
                400,
                "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                "Attachment size must be greater than the minimum size.",
            )
        if size > UPLOAD_MAX_SIZE:
            raise GraphError(
                400,
                "ErrorAttachmentSizeShouldNotBeGreaterThanMaximumSize",
                "Attachment size must be less than the maximum size of 150 MB.",
            )
        now = state.clock.time()
        session = UploadSession(
            id=secrets.token_urlsafe(18),
            secret=secrets.token_urlsafe(32),
            item=item,
            app_key=(token.app.client_id, mailbox.id),
            attachment=attachment,
            size=size,
            expires_at=now + UPLOAD_SESSION_LIFETIME,
        )
        state.store.sessions[session.id] = session
        return Reply(
            201,
            {
                "@odata.context": f"{state.graph_base}/$metadata#microsoft.graph.uploadSession",
                "uploadUrl": f"{state.host}/upload/{session.id}?authtoken={session.secret}",
                "expirationDateTime": _iso_ms(session.expires_at),
                "nextExpectedRanges": ["0-"],
            },
        )

    def handle(self, req: HttpRequest, session_id: str) -> Prepared | Reply:
        """PUT, GET or DELETE on an upload URL: authorised by the URL's own token, not a bearer."""
        state = self.state
        try:
            session = state.store.sessions.get(session_id)
            params = dict(urllib.parse.parse_qsl(req.query))
            if session is None or not secrets.compare_digest(params.get("authtoken", ""), session.secret):
                raise GraphError(404, "ErrorItemNotFound", "The upload session does not exist or has ended.")
            if req.headers.get("authorization"):
                raise GraphError(
                    401,
                    "InvalidAuthenticationToken",
                    "Do not send an Authorization header to an upload URL: the URL carries its own "
                    "token, and a Graph token's audience is not valid here.",
                )
            if state.clock.time() > session.expires_at:
                del state.store.sessions[session_id]
                raise GraphError(404, "ErrorItemNotFound", "The upload session has expired.")
            if req.method == "DELETE":
                del state.store.sessions[session_id]
                return Reply(204)
            if req.method == "GET":
                return Reply(200, self._session_status(session))
            if req.method != "PUT":
                raise GraphError(405, "MethodNotAllowed", "Upload URLs take PUT, GET and DELETE.")
            mailbox = state.directory.mailbox(session.app_key[1])
            assert mailbox is not None
            return self.graph.admit(
                req, "request", session.app_key[0], mailbox, lambda: self._put_chunk(req, session)
            )
        except GraphError as exc:
            return self.graph.error(exc, req.client_request_id)

    def _session_status(self, session: UploadSession) -> dict[str, Any]:
        return {
            "expirationDateTime": _iso_ms(session.expires_at),
            "nextExpectedRanges": [str(len(session.data))],
        }

    async def _put_chunk(self, req: HttpRequest, session: UploadSession) -> Reply:
        state = self.state
        body = req.body if isinstance(req.body, bytes) else b""
        m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+)\s*", req.headers.get("content-range", ""))
        if m is None:
            raise GraphError(
                400, "InvalidContentRange", "The Content-Range header must be 'bytes START-END/TOTAL'."
            )
        start, end, total = (int(g) for g in m.groups())
        if total != session.size:
            raise GraphError(
                400,
                "InvalidContentRange",
                f"The total size {total} differs from the session's {session.size} bytes.",
            )
        if len(body) > UPLOAD_CHUNK_LIMIT:
            raise GraphError(
                413, "RequestEntityTooLarge", f"A chunk may carry at most {UPLOAD_CHUNK_LIMIT} bytes."
            )
        if end < start or end - start + 1 != len(body) or end >= total:
            raise GraphError(
                400,
                "InvalidContentRange",
                f"Content-Range {start}-{end} does not match the {len(body)} bytes sent.",
            )
        if start != len(session.data):
            raise GraphError(
                416,
                "RangeNotSatisfiable",
                f"Upload the bytes in order: the next expected range starts at {len(session.data)}.",
            )
        verdict = state.throttle.upload(session.app_key, len(body), state.clock.time())
        if verdict is not None:
            return self.graph._throttled(verdict, req)
        session.data += body
        if len(session.data) < session.size:
            return Reply(200, self._session_status(session))
        state.store.sessions.pop(session.id, None)
        attachment_id = "AAMkA" + secrets.token_urlsafe(24) + "="
        item = session.item
        meta = session.attachment
        item.uploads.append(
            {
                "id": attachment_id,
                "name": meta["name"],
                "contentType": meta.get("contentType", "application/octet-stream"),
                "size": session.size,
                "isInline": meta.get("isInline", False),
                "contentId": meta.get("contentId"),
                "content": bytes(session.data),
            }
        )
        if state.outbox is not None:
            state.outbox.write_draft(item)
        location = (
            f"{state.graph_base}/users('{session.app_key[1]}')/messages('{item.id}')"
            f"/attachments('{attachment_id}')"
        )
        return Reply(201, None, {"Location": location})


def _iso_ms(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e7):07d}Z"

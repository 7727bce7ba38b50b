"""Messages too big for ``sendMail``: a draft, an upload session per large attachment, then ``send``.

Only the final ``send`` can deliver anything, so a failure before it is certainly "not sent" (the
draft left behind is deleted when possible), while a lost answer to ``send`` is "unknown" like any
other: the draft carries the message's tag, which is what Sent Items is searched for.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from mailmerge.send.graph import (
    UPLOAD_CHUNK_BYTES,
    UPLOAD_SESSION_BYTES,
    Attachment,
    ItemAnswer,
    OutgoingMessage,
    message_json,
    parse_answer,
)
from mailmerge.send.policy import Decision, Verdict, classify, classify_transport_error
from mailmerge.send.transport import Transport, TransportError


class _Stop(Exception):
    """A step failed; carries the decision for the whole message."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.code)
        self.decision = decision


def _before_send(decision: Decision) -> Decision:
    """A failure before ``send``: whatever the answer, nothing was delivered."""
    if decision.verdict is Verdict.UNKNOWN:
        return Decision(Verdict.RETRY, decision.code, f"not sent (draft step): {decision.message}")
    return decision


class DraftSender:
    """Sends one large message through the draft + upload-session path."""

    def __init__(
        self, transport: Transport, *, base_url: str, token: str, timeout: float, now: float
    ) -> None:
        self.transport = transport
        self.base_url = base_url
        self.token = token
        self.timeout = timeout
        self.now = now

    async def _call(
        self,
        method: str,
        url: str,
        body: Any = None,
        *,
        extra: dict[str, str] | None = None,
        raw: bytes | None = None,
        authorised: bool = True,
    ) -> ItemAnswer:
        headers = {"Accept": "application/json", **(extra or {})}
        if authorised:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = raw
        if body is not None:
            headers["Content-Type"] = "application/json"
            payload = json.dumps(body, ensure_ascii=False).encode()
        response = await self.transport.request(
            method, url, headers=headers, body=payload, timeout=self.timeout
        )
        return parse_answer(response.status, response.headers, response.body)

    async def _step(
        self, method: str, url: str, body: Any = None, *, expect: tuple[int, ...], **options: Any
    ) -> ItemAnswer:
        try:
            answer = await self._call(method, url, body, **options)
        except TransportError as exc:
            raise _Stop(_before_send(classify_transport_error(exc))) from exc
        if answer.status not in expect:
            raise _Stop(_before_send(classify(answer, self.now)))
        return answer

    async def send(self, sender: str, message: OutgoingMessage) -> Decision:
        """Create the draft, upload its large attachments, send it; the decision for the recipient."""
        large = tuple(a for a in message.attachments if len(a.content) >= UPLOAD_SESSION_BYTES)
        small = tuple(a for a in message.attachments if len(a.content) < UPLOAD_SESSION_BYTES)
        messages_url = f"{self.base_url}{sender}/messages"
        try:
            draft = await self._step(
                "POST",
                messages_url,
                message_json(replace(message, attachments=small)),
                expect=(201,),
                extra={"Prefer": 'IdType="ImmutableId"'},
            )
        except _Stop as stop:
            return stop.decision
        draft_id = str(draft.body["id"]) if isinstance(draft.body, dict) and draft.body.get("id") else None
        if draft_id is None:
            return Decision(Verdict.RETRY, "MalformedAnswer", "the draft came back without an id")
        message_url = f"{messages_url}/{draft_id}"
        try:
            for attachment in large:
                await self._upload(message_url, attachment)
        except _Stop as stop:
            await self._discard(message_url)
            return stop.decision
        try:
            answer = await self._call("POST", f"{message_url}/send")
        except TransportError as exc:
            return classify_transport_error(exc)
        return classify(answer, self.now)

    async def _upload(self, message_url: str, attachment: Attachment) -> None:
        item: dict[str, Any] = {
            "attachmentType": "file",
            "name": attachment.name,
            "size": len(attachment.content),
            "contentType": attachment.content_type,
        }
        if attachment.content_id:
            item.update(isInline=True, contentId=attachment.content_id)
        session = await self._step(
            "POST",
            f"{message_url}/attachments/createUploadSession",
            {"AttachmentItem": item},
            expect=(200, 201),
        )
        upload_url = session.body.get("uploadUrl") if isinstance(session.body, dict) else None
        if not upload_url:
            raise _Stop(Decision(Verdict.RETRY, "MalformedAnswer", "the upload session has no uploadUrl"))
        total = len(attachment.content)
        for start in range(0, total, UPLOAD_CHUNK_BYTES):
            chunk = attachment.content[start : start + UPLOAD_CHUNK_BYTES]
            end = start + len(chunk) - 1
            # The upload URL carries its own authorisation; Graph refuses an Authorization header here.
            await self._step(
                "PUT",
                str(upload_url),
                raw=chunk,
                authorised=False,
                expect=(200, 201),
                extra={
                    "Content-Range": f"bytes {start}-{end}/{total}",
                    "Content-Type": "application/octet-stream",
                },
            )

    async def _discard(self, message_url: str) -> None:
        """Delete an unsent draft (best effort: a leftover draft delivers nothing)."""
        try:
            await self._call("DELETE", message_url)
        except TransportError:
            return

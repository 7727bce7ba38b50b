"""Message and request validation, written from Graph's schema and documented limits.

Two passes, as Graph does them: `normalise_message` reads the JSON against the schema (unknown
properties, wrong types and bad enum values are `RequestBodyRead` errors, names and enum values are
matched case-insensitively) and returns the message with canonical names; `check_sendable` applies
the rules Exchange applies on submission (recipients, headers, sizes, send-as).
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import json
import re
from email.message import EmailMessage
from typing import Any

from .wire import GraphError

INLINE_ATTACHMENT_LIMIT = 3 * 1024 * 1024
MAX_HEADERS = 5
_FILE_ATTACHMENT = "#microsoft.graph.fileattachment"

# type name -> {lower-cased property: (canonical name, type)}; "coll:T" is a collection of T.
_P = dict[str, tuple[str, str]]


def _props(*pairs: tuple[str, str]) -> _P:
    return {name.lower(): (name, typ) for name, typ in pairs}


_OUTLOOK_ITEM = (
    ("id", "string"),
    ("categories", "coll:string"),
    ("changeKey", "string"),
    ("createdDateTime", "string"),
    ("lastModifiedDateTime", "string"),
)
SCHEMA: dict[str, _P] = {
    "message": _props(
        *_OUTLOOK_ITEM,
        ("bccRecipients", "coll:recipient"),
        ("body", "itemBody"),
        ("bodyPreview", "string"),
        ("ccRecipients", "coll:recipient"),
        ("conversationId", "string"),
        ("conversationIndex", "binary"),
        ("flag", "followupFlag"),
        ("from", "recipient"),
        ("hasAttachments", "bool"),
        ("importance", "importance"),
        ("inferenceClassification", "inferenceClassificationType"),
        ("internetMessageHeaders", "coll:internetMessageHeader"),
        ("internetMessageId", "string"),
        ("isDeliveryReceiptRequested", "bool"),
        ("isDraft", "bool"),
        ("isRead", "bool"),
        ("isReadReceiptRequested", "bool"),
        ("parentFolderId", "string"),
        ("receivedDateTime", "string"),
        ("replyTo", "coll:recipient"),
        ("sender", "recipient"),
        ("sentDateTime", "string"),
        ("subject", "string"),
        ("toRecipients", "coll:recipient"),
        ("uniqueBody", "itemBody"),
        ("webLink", "string"),
        ("attachments", "coll:attachment"),
        ("extensions", "coll:any"),
        ("multiValueExtendedProperties", "coll:any"),
        ("singleValueExtendedProperties", "coll:singleValueLegacyExtendedProperty"),
    ),
    "recipient": _props(("emailAddress", "emailAddress")),
    "emailAddress": _props(("address", "string"), ("name", "string")),
    "itemBody": _props(("content", "string"), ("contentType", "bodyType")),
    "internetMessageHeader": _props(("name", "string"), ("value", "string")),
    "singleValueLegacyExtendedProperty": _props(("id", "string"), ("value", "string")),
    "fileAttachment": _props(
        ("id", "string"),
        ("contentType", "string"),
        ("isInline", "bool"),
        ("lastModifiedDateTime", "string"),
        ("name", "string"),
        ("size", "int"),
        ("contentBytes", "binary"),
        ("contentId", "string"),
        ("contentLocation", "string"),
    ),
    "attachmentItem": _props(
        ("attachmentType", "attachmentType"),
        ("contentId", "string"),
        ("contentType", "string"),
        ("isInline", "bool"),
        ("name", "string"),
        ("size", "int"),
    ),
}
ENUMS: dict[str, tuple[str, ...]] = {
    "bodyType": ("text", "html"),
    "importance": ("low", "normal", "high"),
    "inferenceClassificationType": ("focused", "other"),
    "attachmentType": ("file", "item", "reference"),
}
_RECIPIENT_FIELDS = ("toRecipients", "ccRecipients", "bccRecipients")
# A plausible address: something without spaces or specials, @, and a dotted domain of DNS labels.
_ADDRESS = re.compile(
    r"^[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_EXT_ID = re.compile(
    r"^(?P<type>(?:Binary|Boolean|Currency|CLSID|Double|Float|Integer|Long|Object|Short|String|SystemTime)(?:Array)?)"
    r"\s+(?:(?P<guid>\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\})"
    r"\s+(?:Name\s+(?P<name>\S.*)|Id\s+(?P<id>0x[0-9A-Fa-f]{1,4}))|(?P<tag>0x[0-9A-Fa-f]{1,4}))$",
    re.IGNORECASE,
)
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")


def body_read_error(message: str) -> GraphError:
    return GraphError(400, "RequestBodyRead", message)


def parse_json(raw: Any) -> Any:
    """The request's JSON (already parsed for a batch item), or 400 as Graph answers bad JSON."""
    if not isinstance(raw, (bytes, bytearray, str)):
        return raw
    if not raw or not raw.strip():
        raise GraphError(400, "BadRequest", "Empty Payload. JSON content expected.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise body_read_error(f"Invalid JSON. {exc}") from exc


def ext_property_key(prop_id: str) -> tuple[str, ...] | None:
    """Canonical identity of an extended property id: type and GUID case-insensitive, Name as is."""
    m = _EXT_ID.match(prop_id.strip())
    if m is None:
        return None
    kind = m["type"].lower()
    if m["tag"]:
        return (kind, "tag", str(int(m["tag"], 16)))
    guid = m["guid"].lower()
    if m["name"] is not None:
        return (kind, guid, "name", m["name"])
    return (kind, guid, "id", str(int(m["id"], 16)))


# -- pass 1: schema ------------------------------------------------------------------------------
def normalise_message(obj: Any) -> dict[str, Any]:
    """The message read against the schema, with canonical property names and enum values."""
    return read_object(obj, "message")


def read_object(obj: Any, typ: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise body_read_error(
            f"Cannot read a value of type 'microsoft.graph.{typ}': a JSON object was expected."
        )
    props = SCHEMA[typ]
    out: dict[str, Any] = {}
    for key, value in obj.items():
        spec = props.get(key.lower())
        if spec is None:
            if key.startswith("@odata.") or "@odata." in key:
                continue
            raise body_read_error(
                f"The property '{key}' does not exist on type 'microsoft.graph.{typ}'. Make sure to only use "
                "property names that are defined by the type or mark the type as open type."
            )
        if value is None:
            continue
        name, vtype = spec
        out[name] = _read_value(value, vtype, name)
    return out


def _read_value(value: Any, vtype: str, name: str) -> Any:
    if vtype.startswith("coll:"):
        if not isinstance(value, list):
            raise body_read_error(f"The property '{name}' is a collection: a JSON array was expected.")
        inner = vtype[5:]
        return [_read_value(v, inner, name) for v in value]
    if vtype == "string":
        if not isinstance(value, str):
            raise body_read_error(f"Cannot convert the literal '{value}' to the expected type 'Edm.String'.")
        return value
    if vtype == "bool":
        if not isinstance(value, bool):
            raise body_read_error(f"Cannot convert the literal '{value}' to the expected type 'Edm.Boolean'.")
        return value
    if vtype == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise body_read_error(f"Cannot convert the literal '{value}' to the expected type 'Edm.Int32'.")
        return value
    if vtype == "binary":
        if not isinstance(value, str):
            raise body_read_error(f"Cannot convert the literal '{value}' to the expected type 'Edm.Binary'.")
        return value
    if vtype in ENUMS:
        if not isinstance(value, str) or value.lower() not in ENUMS[vtype]:
            raise body_read_error(
                f"Cannot convert the literal '{value}' to the expected type 'microsoft.graph.{vtype}'."
            )
        return value.lower()
    if vtype == "attachment":
        return _read_attachment(value)
    if vtype in ("any", "followupFlag"):
        return value
    return read_object(value, vtype)


def _read_attachment(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise body_read_error("Cannot read an attachment: a JSON object was expected.")
    odata_type = next((v for k, v in value.items() if k.lower() == "@odata.type"), None)
    if odata_type is None:
        raise body_read_error(
            "An instance of the abstract type 'microsoft.graph.attachment' cannot be created: give "
            "'@odata.type': '#microsoft.graph.fileAttachment'."
        )
    if not isinstance(odata_type, str) or "#" + odata_type.lower().lstrip("#") != _FILE_ATTACHMENT:
        raise GraphError(
            400,
            "ErrorInvalidAttachmentType",
            f"The sandbox accepts only '#microsoft.graph.fileAttachment', not '{odata_type}'.",
        )
    out = read_object({k: v for k, v in value.items() if k.lower() != "@odata.type"}, "fileAttachment")
    if "contentBytes" not in out:
        raise body_read_error("The fileAttachment has no contentBytes.")
    try:
        raw = base64.b64decode(out["contentBytes"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise body_read_error(
            f"Cannot convert the literal '{out['contentBytes'][:40]}...' to the expected type 'Edm.Binary'."
        ) from exc
    out["size"] = len(raw)
    return {"@odata.type": "#microsoft.graph.fileAttachment", **out}


# -- pass 2: submission rules ---------------------------------------------------------------------
def recipients(message: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for field in _RECIPIENT_FIELDS:
        for r in message.get(field, ()):
            found.append((r.get("emailAddress") or {}).get("address") or "")
    return found


def check_sendable(
    message: dict[str, Any],
    sender: str,
    max_recipients: int | None,
    bad_recipients: set[str],
    mime: bool = False,
) -> list[str]:
    """Apply Exchange's submission rules; returns the recipient addresses (To, Cc, Bcc).

    The header rules belong to `internetMessageHeaders` in JSON; a MIME message carries its own headers.
    """
    addresses = recipients(message)
    if not addresses:
        raise GraphError(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., A message can't be sent because it contains no recipients.",
        )
    if max_recipients is not None and len(addresses) > max_recipients:
        raise GraphError(
            400,
            "ErrorTooManyRecipients",
            f"The message has {len(addresses)} recipients; a message can have at most "
            f"{max_recipients} recipients across To, Cc and Bcc.",
        )
    for address in (
        *addresses,
        *(((r.get("emailAddress") or {}).get("address") or "") for r in message.get("replyTo", ())),
    ):
        if not _ADDRESS.match(address) or address.lower() in bad_recipients:
            raise GraphError(
                400,
                "ErrorInvalidRecipients",
                f"At least one recipient isn't valid., Recipient '{address}' isn't resolved. All "
                "recipients must be resolved before a message can be submitted.",
            )
    for field in ("from", "sender"):
        claimed = ((message.get(field) or {}).get("emailAddress") or {}).get("address")
        if claimed and claimed.lower() != sender.lower():
            raise GraphError(
                403,
                "ErrorSendAsDenied",
                "The user account which was used to submit this request does not have the right to "
                "send mail on behalf of the specified sending account., Cannot submit message.",
            )
    if not mime:
        check_headers(message)
    for attachment in message.get("attachments", ()):
        if attachment.get("size", 0) >= INLINE_ATTACHMENT_LIMIT and "contentBytes" in attachment:
            raise GraphError(
                413,
                "ErrorMessageSizeExceeded",
                f"The attachment '{attachment.get('name')}' is {attachment['size']} bytes; "
                "attachments in the request must be under 3 MB. Use an upload session.",
            )
    for prop in message.get("singleValueExtendedProperties", ()):
        if ext_property_key(prop.get("id", "")) is None:
            raise GraphError(
                400,
                "ErrorInvalidExtendedProperty",
                f"The extended property id '{prop.get('id')}' is not valid: use '{{type}} {{guid}} "
                "Name {name}', '{type} {guid} Id 0x...' or '{type} 0x...'.",
            )
    message_id = message.get("internetMessageId")
    if message_id is not None and not _MESSAGE_ID.match(message_id):
        raise GraphError(
            400,
            "ErrorInvalidInternetMessageId",
            f"The internetMessageId '{message_id}' is not of the form <local@domain>.",
        )
    return addresses


def check_headers(message: dict[str, Any]) -> None:
    headers = message.get("internetMessageHeaders")
    if headers is None:
        return
    if not headers:
        raise GraphError(
            400,
            "InvalidInternetMessageHeaderCollection",
            "The internet message header collection can't be empty: leave it out instead.",
        )
    if len(headers) > MAX_HEADERS:
        raise GraphError(
            400,
            "InvalidInternetMessageHeaderCollection",
            f"Maximum number of headers in one message should be less than or equal to {MAX_HEADERS}.",
        )
    for header in headers:
        name = header.get("name") or ""
        if not name.lower().startswith("x-") or header.get("value") is None:
            raise GraphError(
                400,
                "InvalidInternetMessageHeader",
                f"The internet message header name '{name}' should start with 'x-' or 'X-', and "
                "every header needs a value.",
            )


# -- MIME ------------------------------------------------------------------------------------------
def message_from_mime(raw: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """A base64 MIME body read into a Graph-shaped message, plus its headers (Bcc left out)."""
    text = raw if isinstance(raw, (bytes, bytearray)) else str(raw or "").encode("ascii", "replace")
    try:
        mime = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise GraphError(
            400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content."
        ) from exc
    if not mime.strip():
        raise GraphError(400, "ErrorMimeContentInvalid", "The MIME content is empty.")
    parsed = email.message_from_bytes(mime, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    message: dict[str, Any] = {}
    for field, header in (
        ("toRecipients", "to"),
        ("ccRecipients", "cc"),
        ("bccRecipients", "bcc"),
        ("replyTo", "reply-to"),
    ):
        pairs = email.utils.getaddresses([str(v) for v in parsed.get_all(header, [])])
        if pairs:
            message[field] = [{"emailAddress": {"address": a, "name": n or a}} for n, a in pairs]
    if parsed["subject"] is not None:
        message["subject"] = str(parsed["subject"])
    if parsed["from"] is not None:
        pairs = email.utils.getaddresses([str(parsed["from"])])
        if pairs:
            message["from"] = {"emailAddress": {"address": pairs[0][1], "name": pairs[0][0]}}
    if parsed["message-id"] is not None:
        message["internetMessageId"] = str(parsed["message-id"]).strip()
    body = parsed.get_body(preferencelist=("html", "plain"))
    if body is not None:
        kind = "html" if body.get_content_subtype() == "html" else "text"
        message["body"] = {"contentType": kind, "content": body.get_content()}
    attachments = []
    for part in parsed.iter_attachments():
        payload = part.get_payload(decode=True) or b""
        attachments.append(
            {
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": part.get_filename() or "attachment",
                "contentType": part.get_content_type(),
                "size": len(payload),
                "isInline": part.get_content_disposition() == "inline",
                "contentId": (part["content-id"] or "").strip("<>") or None,
                "contentBytes": base64.b64encode(payload).decode("ascii"),
            }
        )
    if attachments:
        message["attachments"] = attachments
    custom = [{"name": k, "value": str(v)} for k, v in parsed.items() if k.lower().startswith("x-")]
    if custom:
        message["internetMessageHeaders"] = custom
    headers = {k: str(v) for k, v in parsed.items() if k.lower() != "bcc"}
    return message, headers

"""OData on message collections: $filter, $select, $expand, $top, $skip, $orderby, and the message
resource as Graph shows it.

The $filter grammar is the part of OData that mail lookups use: comparisons (eq ne gt ge lt le) on
message properties, `and`/`or`/`not`, parentheses, and
`singleValueExtendedProperties/any(ep: ep/id eq '...' and ep/value eq '...')`. Keywords and property
names are case-insensitive, as in Graph. A filter is compiled once into a predicate.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .mailstore import StoredItem
from .validation import SCHEMA, ext_property_key
from .wire import GraphError, iso

Predicate = Callable[[StoredItem], bool]
_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<dt>\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:\d\d)?)"
    r"|(?P<punct>[():,])|(?P<word>[^\s():,']+))"
)
_OPS = {"eq", "ne", "gt", "ge", "lt", "le"}
_TIME_FIELDS = {
    "sentdatetime": lambda i: i.sent_at,
    "receiveddatetime": lambda i: i.received_at if i.received_at is not None else i.created_at,
    "createddatetime": lambda i: i.created_at,
    "lastmodifieddatetime": lambda i: i.created_at,
}
_MESSAGE_PROPS = SCHEMA["message"]
_OWA = "https://outlook.office365.com/owa/"
DEFAULT_PAGE = 10
MAX_PAGE = 1000


def bad_filter(detail: str) -> GraphError:
    return GraphError(
        400, "ErrorInvalidUrlQueryFilter", f"The query filter contains one or more invalid nodes. {detail}"
    )


@dataclass
class Query:
    """A parsed OData query for a message collection."""

    predicate: Predicate | None
    ext_lookup: tuple[tuple[str, ...], str] | None  # an ext property equality usable with the index
    select: list[str] | None
    expand_ext: Predicate | bool | None  # False: no expand; True: all; else filter on the property
    expand_filter: Callable[[dict[str, Any]], bool] | None
    top: int
    skip: int
    order_desc: bool
    order_key: Callable[[StoredItem], float]
    params: list[tuple[str, str]]


def parse_query(raw: str) -> Query:
    params = urllib.parse.parse_qsl(raw, keep_blank_values=True)
    options = {k.lower(): v for k, v in params}
    predicate, ext_lookup = None, None
    if "$filter" in options:
        node = _Parser(options["$filter"]).parse()
        predicate = _compile(node, {})
        ext_lookup = _indexable(node)
    select = None
    if "$select" in options:
        select = []
        for name in (s.strip() for s in options["$select"].split(",") if s.strip()):
            spec = _MESSAGE_PROPS.get(name.lower())
            if spec is None:
                raise GraphError(
                    400,
                    "RequestBroker--ParseUri",
                    f"Could not find a property named '{name}' on type 'microsoft.graph.message'.",
                )
            select.append(spec[0])
    expand_filter = None
    expand: Any = False
    if "$expand" in options:
        m = re.fullmatch(
            r"\s*singleValueExtendedProperties\s*(?:\(\s*\$filter\s*=\s*(.*)\))?\s*",
            options["$expand"],
            re.IGNORECASE | re.DOTALL,
        )
        if m is None:
            raise GraphError(
                400,
                "BadRequest",
                f"Parsing OData Select and Expand failed: the sandbox expands "
                f"only singleValueExtendedProperties, not '{options['$expand']}'.",
            )
        expand = True
        if m.group(1):
            expand_filter = _compile_prop_filter(_Parser(m.group(1)).parse())
    top = _int_option(options, "$top", DEFAULT_PAGE)
    skip = _int_option(options, "$skip", 0)
    order_desc, order_key = True, _TIME_FIELDS["receiveddatetime"]
    if "$orderby" in options:
        parts = options["$orderby"].split()
        field = parts[0].lower() if parts else ""
        if (
            field not in _TIME_FIELDS
            or len(parts) > 2
            or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc"))
        ):
            raise GraphError(
                400,
                "BadRequest",
                f"The sandbox orders messages by date fields only, not '{options['$orderby']}'.",
            )
        order_key = _TIME_FIELDS[field]
        order_desc = len(parts) == 2 and parts[1].lower() == "desc"
    return Query(
        predicate,
        ext_lookup,
        select,
        expand,
        expand_filter,
        min(top, MAX_PAGE),
        skip,
        order_desc,
        lambda i, k=order_key: k(i) or 0.0,
        params,
    )


def _int_option(options: dict[str, str], name: str, default: int) -> int:
    if name not in options:
        return default
    try:
        value = int(options[name])
    except ValueError:
        raise GraphError(400, "BadRequest", f"Invalid value '{options[name]}' for {name}.") from None
    if value < 0 or (name == "$top" and value == 0):
        raise GraphError(400, "BadRequest", f"Invalid value '{value}' for {name}.")
    return value


def run_query(query: Query, items: Iterable[StoredItem], now: float) -> tuple[list[StoredItem], bool]:
    """The page of visible, matching items, and whether there are more."""
    visible = [i for i in items if i.visible_at <= now and (query.predicate is None or query.predicate(i))]
    visible.sort(key=lambda i: (query.order_key(i), i.sequence), reverse=query.order_desc)
    page = visible[query.skip : query.skip + query.top]
    return page, len(visible) > query.skip + query.top


def next_link(base_url: str, query: Query) -> str:
    params = [(k, v) for k, v in query.params if k.lower() != "$skip"]
    params.append(("$skip", str(query.skip + query.top)))
    return f"{base_url}?{urllib.parse.urlencode(params, quote_via=urllib.parse.quote)}"


# -- resource ------------------------------------------------------------------------------------
def message_resource(item: StoredItem, sender: dict[str, Any], query: Query | None) -> dict[str, Any]:
    m = item.message
    body = m.get("body") or {"contentType": "text", "content": ""}
    preview = (
        re.sub(r"<[^>]+>", " ", body.get("content", ""))
        if body.get("contentType") == "html"
        else body.get("content", "")
    )
    has_attachments = bool(m.get("attachments") or item.uploads)
    resource: dict[str, Any] = {
        "@odata.etag": f'W/"{item.change_key}"',
        "id": item.id,
        "createdDateTime": iso(item.created_at),
        "lastModifiedDateTime": iso(item.created_at),
        "changeKey": item.change_key,
        "categories": m.get("categories", []),
        "receivedDateTime": iso(item.received_at if item.received_at is not None else item.created_at),
        "sentDateTime": iso(item.sent_at) if item.sent_at is not None else None,
        "hasAttachments": has_attachments,
        "internetMessageId": item.internet_message_id,
        "subject": m.get("subject"),
        "bodyPreview": " ".join(preview.split())[:255],
        "importance": m.get("importance", "normal"),
        "parentFolderId": f"AQMkA{item.mailbox.encode().hex()[:24]}{item.folder}AAA=",
        "conversationId": "AAQkA" + item.internet_message_id.encode().hex()[:40] + "=",
        "isDeliveryReceiptRequested": m.get("isDeliveryReceiptRequested", False),
        "isReadReceiptRequested": m.get("isReadReceiptRequested", False),
        "isRead": item.folder != "inbox",
        "isDraft": item.is_draft,
        "webLink": f"{_OWA}?ItemID={urllib.parse.quote(item.id, safe='')}&viewmodel=ReadMessageItem",
        "inferenceClassification": "focused",
        "body": body,
        "sender": m.get("sender") or sender,
        "from": m.get("from") or sender,
        "toRecipients": m.get("toRecipients", []),
        "ccRecipients": m.get("ccRecipients", []),
        "bccRecipients": m.get("bccRecipients", []),
        "replyTo": m.get("replyTo", []),
        "flag": {"flagStatus": "notFlagged"},
    }
    if query is not None and query.select is not None:
        chosen = {"@odata.etag": resource["@odata.etag"], "id": item.id}
        for name in query.select:
            if name == "internetMessageHeaders":
                chosen[name] = m.get("internetMessageHeaders", [])
            elif name in resource:
                chosen[name] = resource[name]
        resource = chosen
    if query is not None and query.expand_ext is not False:
        props = m.get("singleValueExtendedProperties", [])
        if query.expand_filter is not None:
            props = [p for p in props if query.expand_filter(p)]
        if props:
            resource["singleValueExtendedProperties"] = [
                {"id": p["id"], "value": p.get("value")} for p in props
            ]
    return resource


# -- $filter -------------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None or m.end() == pos:
                if text[pos:].strip():
                    raise bad_filter(f"Unexpected text at position {pos}: {text[pos : pos + 20]!r}.")
                break
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1].lower() != value):
            raise bad_filter(f"Expected {value or 'more'} in {self.text!r}.")
        self.i += 1
        return token

    def parse(self) -> Any:
        node = self._or()
        if self.peek() is not None:
            raise bad_filter(f"Unexpected {self.peek()[1]!r} in {self.text!r}.")  # type: ignore[index]
        return node

    def _keyword(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token[0] == "word" and token[1].lower() == word

    def _or(self) -> Any:
        node = self._and()
        while self._keyword("or"):
            self.take()
            node = ("or", node, self._and())
        return node

    def _and(self) -> Any:
        node = self._unary()
        while self._keyword("and"):
            self.take()
            node = ("and", node, self._unary())
        return node

    def _unary(self) -> Any:
        if self._keyword("not"):
            self.take()
            return ("not", self._unary())
        if self.peek() == ("punct", "("):
            self.take()
            node = self._or()
            self.take(")")
            return node
        kind, path = self.take()
        if kind != "word":
            raise bad_filter(f"Expected a property name, found {path!r}.")
        if self.peek() == ("punct", "("):
            self.take()
            var = self.take()[1]
            self.take(":")
            inner = self._or()
            self.take(")")
            return ("any", path, var, inner)
        op = self.take()[1].lower()
        if op not in _OPS:
            raise bad_filter(f"Unsupported operator {op!r}.")
        return ("cmp", path, op, self._literal())

    def _literal(self) -> Any:
        kind, text = self.take()
        if kind == "str":
            return text[1:-1].replace("''", "'")
        if kind == "dt":
            try:
                return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise bad_filter(f"Cannot read the date {text!r}.") from None
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low == "null":
            return None
        try:
            return float(text)
        except ValueError:
            raise bad_filter(f"Cannot read the literal {text!r}.") from None


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "eq":
        return left == right
    if op == "ne":
        return left != right
    if left is None or right is None:
        return False
    return {"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}[op]


def _compile(node: Any, env: dict[str, str]) -> Predicate:
    kind = node[0]
    if kind in ("and", "or"):
        left, right = _compile(node[1], env), _compile(node[2], env)
        return (lambda i: left(i) and right(i)) if kind == "and" else (lambda i: left(i) or right(i))
    if kind == "not":
        inner = _compile(node[1], env)
        return lambda i: not inner(i)
    if kind == "any":
        _, path, var, inner_node = node
        if path.lower() != "singlevalueextendedproperties/any":
            raise bad_filter(f"Lambda filters work on singleValueExtendedProperties only, not {path!r}.")
        prop_pred = _compile_prop_filter(inner_node, var)
        return lambda i: any(prop_pred(p) for p in i.message.get("singleValueExtendedProperties", ()))
    _, path, op, value = node
    field = path.lower()
    if field in _TIME_FIELDS:
        if not isinstance(value, float):
            raise bad_filter(f"{path} compares with a DateTimeOffset such as 2024-01-01T00:00:00Z.")
        getter = _TIME_FIELDS[field]
        return lambda i: _compare(op, _whole_seconds(getter(i)), value)
    if field == "internetmessageid":
        return lambda i: _compare(op, i.internet_message_id, value)
    if field == "subject":
        return lambda i: _compare(op, i.message.get("subject"), value)
    if field == "isdraft":
        return lambda i: _compare(op, i.is_draft, value)
    if field == "isread":
        return lambda i: _compare(op, i.folder != "inbox", value)
    if field == "hasattachments":
        return lambda i: _compare(op, bool(i.message.get("attachments") or i.uploads), value)
    raise bad_filter(f"The sandbox cannot filter on {path!r}.")


def _whole_seconds(t: float | None) -> float | None:
    return None if t is None else float(int(t))


def _compile_prop_filter(node: Any, var: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """A predicate on one extended property: `ep/id eq '...'`, `ep/value eq '...'` (or bare id/value)."""
    kind = node[0]
    if kind in ("and", "or"):
        left, right = _compile_prop_filter(node[1], var), _compile_prop_filter(node[2], var)
        return (lambda p: left(p) and right(p)) if kind == "and" else (lambda p: left(p) or right(p))
    if kind != "cmp" or node[2] not in ("eq", "ne"):
        raise bad_filter("Extended property filters compare id and value with eq.")
    _, path, op, value = node
    name = path.split("/", 1)[1] if var and path.lower().startswith(var.lower() + "/") else path
    if name.lower() == "id":
        wanted = ext_property_key(str(value))
        if wanted is None:
            raise GraphError(
                400, "ErrorInvalidExtendedProperty", f"The extended property id '{value}' is not valid."
            )
        return lambda p: _compare(op, ext_property_key(p.get("id", "")), wanted)
    if name.lower() == "value":
        return lambda p: _compare(op, p.get("value"), value)
    raise bad_filter(f"Unknown extended property field {path!r}.")


def _indexable(node: Any) -> tuple[tuple[str, ...], str] | None:
    """An `any(ep: ep/id eq X and ep/value eq Y)` that must hold for a match: its (key, value)."""
    if node[0] == "and":
        return _indexable(node[1]) or _indexable(node[2])
    if node[0] != "any" or node[3][0] != "and":
        return None
    found: dict[str, Any] = {}
    for side in (node[3][1], node[3][2]):
        if side[0] != "cmp" or side[2] != "eq":
            return None
        found[side[1].rsplit("/", 1)[-1].lower()] = side[3]
    key = ext_property_key(str(found.get("id", "")))
    if key is None or not isinstance(found.get("value"), str):
        return None
    return key, found["value"]

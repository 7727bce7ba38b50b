"""JSON batching (`POST /v1.0/$batch`), as Graph documents it.

Outer checks first (1 to 20 items, unique ids, relative urls, a Content-Type for every body,
dependsOn naming items of the batch, no cycles): any failure is an outer 400. Then items run in
waves: every item whose dependencies are done starts in the same wave, and all items of a wave take
their throttling slots before any of them runs, so a wave with more than `concurrent_requests` items
for one mailbox gets 429s, as Outlook gives. An item whose dependency failed gets 424. Answers come
back in a seeded shuffled order: clients must match them by id.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .directory import AccessToken
from .faults import Fault
from .graph import Graph, Prepared
from .validation import parse_json
from .wire import GraphError, HttpRequest, Reply

MAX_ITEMS = 20
_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


@dataclass(slots=True)
class BatchItem:
    id: str
    request: HttpRequest
    depends_on: tuple[str, ...]


def bad_batch(message: str) -> GraphError:
    return GraphError(400, "BadRequest", message)


def parse_batch(body: Any) -> list[BatchItem]:
    try:
        payload = parse_json(body)
    except GraphError as exc:
        raise bad_batch(f"Invalid batch payload format. {exc.message}") from exc
    raw_items = (
        next((v for k, v in payload.items() if k.lower() == "requests"), None)
        if isinstance(payload, dict)
        else None
    )
    if not isinstance(raw_items, list):
        raise bad_batch("Invalid batch payload format: a JSON object with a 'requests' array was expected.")
    if not 1 <= len(raw_items) <= MAX_ITEMS:
        raise bad_batch(f"A batch holds 1 to {MAX_ITEMS} requests; this one has {len(raw_items)}.")
    items: list[BatchItem] = []
    seen: set[str] = set()
    for raw in raw_items:
        if not isinstance(raw, dict):
            raise bad_batch("Invalid batch payload format: every request must be a JSON object.")
        fields = {k.lower(): v for k, v in raw.items()}
        item_id, method, url = fields.get("id"), fields.get("method"), fields.get("url")
        if not isinstance(item_id, str) or not item_id:
            raise bad_batch("Every request in a batch needs a non-empty string 'id'.")
        if item_id in seen:
            raise bad_batch(f"Request id '{item_id}' is used more than once; ids must be unique in a batch.")
        seen.add(item_id)
        if not isinstance(method, str) or method.upper() not in _METHODS:
            raise bad_batch(f"Request id '{item_id}' has an invalid method '{method}'.")
        if not isinstance(url, str) or not url:
            raise bad_batch(f"Request id '{item_id}' has no url.")
        if "://" in url.split("?")[0]:
            raise bad_batch(
                f"Request id '{item_id}': the url must be relative to the version, like "
                f"'/users/{{id}}/sendMail', not an absolute URL."
            )
        raw_headers = fields.get("headers") or {}
        if not isinstance(raw_headers, dict) or not all(isinstance(v, str) for v in raw_headers.values()):
            raise bad_batch(f"Request id '{item_id}': headers must be an object of strings.")
        headers = {k.lower(): v for k, v in raw_headers.items()}
        body = fields.get("body")
        if body is not None and "content-type" not in headers:
            raise bad_batch(f"Write request id : {item_id} does not contain Content-Type header or body.")
        if body is None and method.upper() in ("POST", "PUT", "PATCH") and "content-type" in headers:
            raise bad_batch(f"Write request id : {item_id} does not contain Content-Type header or body.")
        depends = fields.get("dependson") or []
        if isinstance(depends, str) or not all(isinstance(d, str) for d in depends):
            raise bad_batch(f"Request id '{item_id}': dependsOn must be an array of request ids.")
        path, _, query = url.partition("?")
        items.append(
            BatchItem(
                item_id,
                HttpRequest(method.upper(), path, query, headers, body, headers.get("client-request-id")),
                tuple(depends),
            )
        )
    for item in items:
        for dep in item.depends_on:
            if dep not in seen or dep == item.id:
                raise bad_batch(
                    f"Request id '{item.id}' depends on '{dep}', which is not another request of this batch."
                )
    _check_acyclic(items)
    return items


def _check_acyclic(items: list[BatchItem]) -> None:
    done: set[str] = set()
    pending = list(items)
    while pending:
        ready = [i for i in pending if all(d in done for d in i.depends_on)]
        if not ready:
            raise bad_batch("The dependsOn references of this batch form a cycle.")
        done.update(i.id for i in ready)
        pending = [i for i in pending if i.id not in done]


class BatchRunner:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.state = graph.state

    async def run(
        self, items: list[BatchItem], token: AccessToken, fault: Fault | None, log: Any
    ) -> tuple[list[dict[str, Any]], int]:
        """Run the items; returns the responses (shuffled) and how many items were executed.

        With a batch `accepted_but_error` fault only the first `budget` items (in run order) execute:
        the caller answers with an outer error whatever happened inside.
        """
        budget = len(items)
        if fault is not None and fault.kind == "accepted_but_error":
            budget = 1 + min(int(fault.extra * len(items)), len(items) - 1)
        results: dict[str, Reply] = {}
        mailboxes: dict[str, str] = {}
        executed = 0
        pending = items
        while pending and executed < budget:
            wave = [i for i in pending if all(d in results for d in i.depends_on)]
            pending = [i for i in pending if not all(d in results for d in i.depends_on)]
            started: list[tuple[BatchItem, Prepared]] = []
            for item in wave:
                failed = next((d for d in item.depends_on if not 200 <= results[d].status < 300), None)
                if failed is not None:
                    results[item.id] = self.graph.error(
                        GraphError(
                            424,
                            "FailedDependency",
                            f"The request '{item.id}' depends on '{failed}', which did not succeed.",
                        ),
                        item.request.client_request_id,
                    )
                    continue
                if executed >= budget:
                    break
                executed += 1
                prepared = self.graph.prepare(item.request, token, "item")
                if isinstance(prepared, Reply):
                    results[item.id] = prepared
                else:
                    started.append((item, prepared))
                    mailboxes[item.id] = prepared.mailbox
            if any(p.latency > 0 for _, p in started):
                replies = await asyncio.gather(*(p.run(i.request.client_request_id) for i, p in started))
            else:
                replies = [await p.run(i.request.client_request_id) for i, p in started]
            for (item, _), reply in zip(started, replies, strict=True):
                if reply.action is not None:  # one item cannot drop the connection: it times out instead
                    reply = self.graph.error(
                        GraphError(504, "GatewayTimeout", "The request timed out."),
                        item.request.client_request_id,
                        fault=reply.fault,
                    )
                results[item.id] = reply
        for item in items:
            if item.id in results:
                log(item, results[item.id], mailboxes.get(item.id))
        responses = [_item_response(item_id, reply) for item_id, reply in results.items()]
        self.state.batch_rng.shuffle(responses)
        return responses, executed


def _item_response(item_id: str, reply: Reply) -> dict[str, Any]:
    headers = dict(reply.headers)
    out: dict[str, Any] = {"id": item_id, "status": reply.status, "headers": headers}
    if reply.body is not None:
        headers.setdefault(
            "Content-Type",
            "application/json; odata.metadata=minimal; odata.streaming=true; "
            "IEEE754Compatible=false; charset=utf-8",
        )
        out["body"] = reply.body
    return out

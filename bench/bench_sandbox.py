"""Throughput of the sandbox through $batch: how many messages per second it accepts.

Starts the sandbox in a separate process (limits off, no latency, no outbox), then drives it with
aiohttp from several concurrent tasks, each posting batches of 20 sendMail items spread over several
mailboxes, for a fixed time. Prints messages accepted per second.

    python bench/bench_sandbox.py [--seconds 10] [--tasks 8] [--mailboxes 8]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import ssl
import time
from typing import Any

import aiohttp

TENANT, CLIENT_ID, SECRET = "bench.onmicrosoft.com", "bench-app", "bench-secret"


def serve(conn: Any, mailboxes: int) -> None:
    from mailmerge.sandbox import Limits, Profile, Sandbox

    sandbox = Sandbox(Profile(limits=Limits.unlimited()))
    sandbox.register_app(TENANT, CLIENT_ID, secret=SECRET)
    for i in range(mailboxes):
        sandbox.add_mailbox(f"sender{i}@bench.example")
    with sandbox:
        conn.send((sandbox.authority_host, sandbox.graph_base_url, str(sandbox.ca_file)))
        conn.recv()  # wait until the driver is done
        conn.send(len(sandbox.delivered()))


def message(n: int) -> dict[str, Any]:
    return {
        "message": {
            "subject": f"Hello {n}",
            "body": {"contentType": "html", "content": f"<p>Dear recipient {n}, here is your letter.</p>"},
            "toRecipients": [{"emailAddress": {"address": f"r{n}@example.com", "name": f"Recipient {n}"}}],
            "singleValueExtendedProperties": [
                {"id": "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name MailMergeId", "value": f"id-{n}"}
            ],
        },
        "saveToSentItems": True,
    }


async def drive(authority: str, graph: str, ca_file: str, seconds: float, tasks: int, mailboxes: int) -> int:
    ctx = ssl.create_default_context(cafile=ca_file)
    connector = aiohttp.TCPConnector(ssl=ctx, limit=tasks)
    async with aiohttp.ClientSession(connector=connector) as session:
        form = {
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "grant_type": "client_credentials",
            "scope": "https://graph.microsoft.com/.default",
        }
        async with session.post(f"{authority}/{TENANT}/oauth2/v2.0/token", data=form) as resp:
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        deadline = time.monotonic() + seconds
        accepted = 0
        counter = 0

        async def worker(w: int) -> None:
            nonlocal accepted, counter
            while time.monotonic() < deadline:
                items = []
                for i in range(20):
                    counter += 1
                    items.append(
                        {
                            "id": str(i),
                            "method": "POST",
                            "url": f"/users/sender{(w + i) % mailboxes}@bench.example/sendMail",
                            "headers": {"Content-Type": "application/json"},
                            "body": message(counter),
                        }
                    )
                async with session.post(f"{graph}/$batch", json={"requests": items}, headers=headers) as resp:
                    body = await resp.json()
                accepted += sum(1 for r in body["responses"] if r["status"] == 202)

        await asyncio.gather(*(worker(w) for w in range(tasks)))
        return accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--mailboxes", type=int, default=8)
    args = parser.parse_args()
    parent, child = mp.Pipe()
    process = mp.get_context("spawn").Process(target=serve, args=(child, args.mailboxes))
    process.start()
    authority, graph, ca_file = parent.recv()
    started = time.perf_counter()
    accepted = asyncio.run(drive(authority, graph, ca_file, args.seconds, args.tasks, args.mailboxes))
    elapsed = time.perf_counter() - started
    parent.send("done")
    delivered = parent.recv()
    process.join()
    print(
        f"accepted {accepted} messages in {elapsed:.1f} s: {accepted / elapsed:,.0f} messages/s "
        f"(sandbox recorded {delivered})"
    )


if __name__ == "__main__":
    main()

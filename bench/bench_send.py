"""Benchmarks of the sending engine against the emulator running in a separate process.

    python bench/bench_send.py [throughput|pool|resume|all] [--recipients 100000]

throughput  ``mailmerge run`` of a campaign with no limits and no latency: messages per second of the
            send phase (first claim to last acceptance, from the database) and the client's peak RSS.
pool        a pool of 5 mailboxes at 30 messages/minute each, time compressed 60x on both sides:
            achieved rate as a fraction of the allowed rate, and the number of 429s.
resume      a campaign of --recipients rows, half sent, is resumed with ``mailmerge resume``: time from
            starting the command to the first new message accepted.

Not part of the test suite: these run for minutes and measure time, which tests never assert on.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import multiprocessing as mp
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TENANT, CLIENT_ID, SECRET = "bench.onmicrosoft.com", "00000000-bench-0000-0000-000000000000", "bench-secret"
REPO = Path(__file__).resolve().parent.parent
RSS_WRAPPER = (
    "import atexit, resource, sys\n"
    "atexit.register(lambda: print(f'PEAK_RSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}',"
    " file=sys.stderr))\n"
    "from mailmerge.cli import main\n"
    "main()\n"
)


def serve(conn: Any, mailboxes: list[str], per_minute: int | None, factor: float, start: float) -> None:
    """The emulator's process: answers until the driver says stop, then reports what it saw."""
    from mailmerge.sandbox import Limits, Profile, Sandbox, ScaledClock

    limits = (
        Limits.unlimited()
        if per_minute is None
        else Limits(messages_per_minute=per_minute, requests_per_10_minutes=None, recipients_per_24h=None)
    )
    clock = ScaledClock(factor, start=start) if factor != 1 else None
    sandbox = Sandbox(Profile(limits=limits), clock=clock)
    with sandbox:
        sandbox.register_app(
            tenant=TENANT,
            client_id=CLIENT_ID,
            secret=SECRET,
            application_permissions=("Mail.Send", "Mail.ReadBasic.All"),
        )
        for mailbox in mailboxes:
            sandbox.add_mailbox(mailbox)
        conn.send((sandbox.authority_host, sandbox.graph_base_url, str(sandbox.ca_file)))
        while True:
            command = conn.recv()
            if command == "stop":
                break
            if command == "delivered":
                conn.send([(m.mailbox, m.accepted_at) for m in sandbox.delivered()])
            elif command == "count":
                conn.send(len(sandbox.delivered()))
            elif command == "throttled":
                conn.send(sum(1 for e in sandbox.request_log() if e["status"] == 429))


class Emulator:
    """The emulator in its own process, so it never competes with the client for the GIL."""

    def __init__(
        self,
        mailboxes: list[str],
        *,
        per_minute: int | None = None,
        factor: float = 1.0,
        start: float | None = None,
    ) -> None:
        self.start = start or time.time()
        self._conn, child = mp.Pipe()
        self._process = mp.Process(
            target=serve, args=(child, mailboxes, per_minute, factor, self.start), daemon=True
        )
        self._process.start()
        self.authority, self.graph, self.ca_file = self._conn.recv()

    def ask(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def stop(self) -> None:
        self._conn.send("stop")
        self._process.join(timeout=30)


def write_campaign(
    folder: Path, emulator: Emulator, recipients: int, mailboxes: list[str], limits: str
) -> Path:
    with (folder / "people.csv").open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["email", "name", "first_name", "city"])
        for i in range(recipients):
            writer.writerow([f"person{i:07d}@fabrikam.example", f"Person {i}", f"P{i}", "Oslo"])
    (folder / "body.html.j2").write_text("<p>Dear {{ first_name }},</p><p>Greetings from {{ city }}.</p>")
    senders = ", ".join(f'"{m}"' for m in mailboxes)
    path = folder / "bench.toml"
    path.write_text(
        textwrap.dedent(f"""
        [campaign]
        name = "bench"
        [sender]
        mailboxes = [{senders}]
        [recipients]
        source = "people.csv"
        name = "name"
        [message]
        subject = "Hello {{{{ first_name }}}}"
        html = "body.html.j2"
        [auth]
        tenant = "{TENANT}"
        client_id = "{CLIENT_ID}"
        client_secret_env = "BENCH_SECRET"
        authority = "{emulator.authority}"
        ca_file = "{emulator.ca_file}"
        [graph]
        base_url = "{emulator.graph}"
        ca_file = "{emulator.ca_file}"
        [limits]
        {limits}
        """),
        encoding="utf-8",
    )
    return path


def _env(folder: Path) -> dict[str, str]:
    return {**os.environ, "BENCH_SECRET": SECRET, "MAILMERGE_TOKEN_CACHE_DIR": str(folder / "tokens")}


@contextmanager
def unlimited_campaign(recipients: int) -> Iterator[tuple[Emulator, Path, Path]]:
    """One mailbox with no limits, the emulator running, and a campaign of ``recipients`` rows."""
    mailboxes = ["sender@bench.example"]
    emulator = Emulator(mailboxes)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            limits = "messages_per_minute = 'unlimited'\ndaily_recipients = 'unlimited'"
            yield emulator, folder, write_campaign(folder, emulator, recipients, mailboxes, limits)
    finally:
        emulator.stop()


def bench_throughput(recipients: int) -> None:
    with unlimited_campaign(recipients) as (emulator, folder, path):
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", RSS_WRAPPER, "run", str(path)],
            env=_env(folder),
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(result.stdout + result.stderr)
        peak_kb = int(result.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
        with sqlite3.connect(folder / "bench.db") as db:
            first, last, sent = db.execute(
                "select min(first_attempt_at), max(sent_at), count(*) from recipients where status='sent'"
            ).fetchone()
        delivered = emulator.ask("count")
        print(
            f"throughput: {sent} sent ({delivered} accepted by the emulator) in {wall:.1f} s wall "
            f"(incl. start-up, pre-flight and import)"
        )
        print(
            f"throughput: send phase {sent / (last - first):,.0f} messages/s; "
            f"client peak RSS {peak_kb / 1024:.0f} MB"
        )


def bench_pool(minutes: float = 6.0, factor: float = 60.0) -> None:
    per_minute, mailboxes = 30, [f"pool{i}@bench.example" for i in range(5)]
    recipients = int(per_minute * len(mailboxes) * minutes)
    start = time.time()
    emulator = Emulator(mailboxes, per_minute=per_minute, factor=factor, start=start)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            os.environ.update(_env(folder))
            path = write_campaign(
                folder, emulator, recipients, mailboxes, f"messages_per_minute = {per_minute}"
            )
            sys.path.insert(0, str(REPO))
            from mailmerge.auth import token_source
            from mailmerge.campaign import load_campaign
            from mailmerge.clock import ScaledClock
            from mailmerge.runner import import_recipients, open_store, send
            from mailmerge.send.transport import AiohttpTransport

            campaign = load_campaign(path)
            with open_store(campaign, clock=ScaledClock(factor, start=start)) as store:
                import_recipients(campaign, store)
                asyncio.run(
                    send(
                        campaign,
                        store,
                        transport=AiohttpTransport(ca_file=emulator.ca_file),
                        tokens=token_source(campaign, secret=SECRET),
                        rng=random.Random(1),
                    )
                )
            accepted = emulator.ask("delivered")
            throttled = emulator.ask("throttled")
        ratios = []
        for mailbox in mailboxes:
            times = sorted(t for m, t in accepted if m == mailbox)
            whole = len(times) // per_minute - 1
            carried = sum(1 for t in times if t < times[0] + 60 * whole)
            ratios.append(carried / (per_minute * whole))
        print(
            f"pool: {len(accepted)} messages from {len(mailboxes)} mailboxes at {per_minute}/min, "
            f"time x{factor:g}: achieved/allowed per mailbox min {min(ratios):.3f} mean "
            f"{sum(ratios) / len(ratios):.3f}; 429 answers: {throttled}"
        )
    finally:
        emulator.stop()


def bench_resume(recipients: int) -> None:
    with unlimited_campaign(recipients) as (emulator, folder, path):
        env = _env(folder)
        process = subprocess.Popen(
            [sys.executable, "-m", "mailmerge", "run", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while emulator.ask("count") < recipients // 2 and process.poll() is None:
            time.sleep(0.01)
        process.kill()
        process.wait()
        before = emulator.ask("count")
        started = time.perf_counter()
        resumed = subprocess.Popen(
            [sys.executable, "-m", "mailmerge", "resume", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while emulator.ask("count") == before:
            time.sleep(0.002)
        first_new = time.perf_counter() - started
        resumed.wait()
        with sqlite3.connect(folder / "bench.db") as db:
            sent = db.execute("select count(*) from recipients where status='sent'").fetchone()[0]
        delivered = emulator.ask("count")
        print(
            f"resume: killed at {before} of {recipients} accepted; first new send {first_new:.2f} s after "
            f"`mailmerge resume` started; finished with {sent} sent, {delivered} accepted "
            f"({'exactly once' if delivered == sent == recipients else 'MISMATCH'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", nargs="?", default="all", choices=["throughput", "pool", "resume", "all"])
    parser.add_argument("--recipients", type=int, default=100_000)
    args = parser.parse_args()
    if args.which in ("throughput", "all"):
        bench_throughput(args.recipients)
    if args.which in ("pool", "all"):
        bench_pool()
    if args.which in ("resume", "all"):
        bench_resume(args.recipients)


if __name__ == "__main__":
    main()

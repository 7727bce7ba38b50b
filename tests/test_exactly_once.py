"""Exactly once against the emulator: faults, lost answers, expired tokens, and processes killed mid-send.

The emulator's record of delivered messages is the ground truth: every recipient must appear in it
exactly once, and the database must agree.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from mailmerge.auth import token_source
from mailmerge.campaign import Campaign, load_campaign
from mailmerge.runner import import_recipients, open_store, require_preflight, send
from mailmerge.sandbox import Every, Faults, Latency, Limits, Profile, Sandbox
from mailmerge.send.transport import AiohttpTransport
from mailmerge.store import Status
from tests.conftest import point_at

SECRET = "test-secret-value-7Qx"
TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
MAILBOXES = ("news@contoso.example", "info@contoso.example")
FAST_RECONCILE = "reconcile_after_seconds = 0.3\nreconcile_grace_seconds = 1.5\nmax_attempts = 30\n"


def _rows(count: int) -> list[dict[str, str]]:
    return [
        {
            "email": f"person{i:04d}@fabrikam.example",
            "name": f"Person {i}",
            "first_name": f"P{i}",
            "city": "Oslo",
        }
        for i in range(count)
    ]


def _sandbox(tmp_path: Path, profile: Profile) -> Sandbox:
    sandbox = Sandbox(profile, outbox=tmp_path / "outbox")
    sandbox.start()
    sandbox.register_app(
        tenant=TENANT,
        client_id=CLIENT_ID,
        secret=SECRET,
        application_permissions=("Mail.Send", "Mail.ReadBasic.All"),
    )
    for mailbox in MAILBOXES:
        sandbox.add_mailbox(mailbox)
    return sandbox


def send_through(sandbox: Sandbox, campaign: Campaign, **options: Any) -> dict[Status, int]:
    """Import and send a campaign with the library against ``sandbox``; the final counts."""
    with open_store(campaign, **options) as store:
        import_recipients(campaign, store)
        summary = asyncio.run(
            send(
                campaign,
                store,
                transport=AiohttpTransport(ca_file=sandbox.ca_file),
                tokens=token_source(campaign, secret=SECRET),
                rng=random.Random(3),
            )
        )
    return summary.counts


def resume_in_parallel(path: Path, workers: int) -> None:
    """Start ``workers`` ``mailmerge resume`` processes on one campaign at once; all must succeed."""
    env = {**os.environ, "MM_TEST_SECRET": SECRET}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "mailmerge", "resume", str(path)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    for process in processes:
        _out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err


def _assert_exactly_once(sandbox: Sandbox, campaign_file: Path, count: int) -> None:
    per_address = Counter(address for message in sandbox.delivered() for address in message.recipients)
    missing = count - len(per_address)
    twice = {address: n for address, n in per_address.items() if n > 1}
    assert missing == 0, f"{missing} recipients never got their message"
    assert not twice, f"sent more than once: {twice}"
    campaign = load_campaign(campaign_file)
    with open_store(campaign) as store:
        counts = store.counts(store.campaign_id(campaign.name))
    assert counts[Status.SENT] == count, counts


def test_faults_of_every_kind_still_deliver_each_recipient_once(make_campaign, tmp_path: Path) -> None:
    faults = Faults(
        seed=7,
        server_error=0.04,
        throttle=0.04,
        accepted_but_error=0.05,
        reset=0.03,
        hang=Every(40),
        hang_seconds=1.5,
        batch_server_error=0.03,
        batch_accepted_but_error=0.03,
        retry_after_seconds=0.2,
    )
    profile = Profile(
        limits=Limits.unlimited(),
        faults=faults,
        token_lifetime_seconds=2,
        sent_items_delay_seconds=0.2,
        latency=Latency.uniform(0.0, 0.01),
    )
    sandbox = _sandbox(tmp_path, profile)
    try:
        path = make_campaign(
            _rows(300), mailboxes=MAILBOXES, limits="messages_per_minute = 'unlimited'\n" + FAST_RECONCILE
        )
        point_at(path, sandbox, request_timeout=1.0)
        campaign = load_campaign(path)
        require_preflight(campaign)
        assert send_through(sandbox, campaign)[Status.SENT] == 300
        kinds = Counter(entry.get("fault") for entry in sandbox.request_log() if entry.get("fault"))
        assert {
            "throttle",
            "server_error",
            "accepted_but_429",
            "accepted_but_504",
            "accepted_but_reset",
        } <= set(kinds)
        grants = [
            e for e in sandbox.request_log() if e.get("grant") == "client_credentials" and e["status"] == 200
        ]
        assert len(grants) > 1, "the 2-second tokens were never renewed during the run"
        _assert_exactly_once(sandbox, path, 300)
    finally:
        sandbox.stop()


def test_killed_runs_resume_to_exactly_once(make_campaign, tmp_path: Path) -> None:
    """A real ``mailmerge run`` is SIGKILLed at seeded random moments, then resumed until done."""
    profile = Profile(
        limits=Limits.unlimited(), latency=Latency.uniform(0.005, 0.03), sent_items_delay_seconds=0.2
    )
    sandbox = _sandbox(tmp_path, profile)
    count = 600
    try:
        path = make_campaign(
            _rows(count), mailboxes=MAILBOXES, limits="messages_per_minute = 'unlimited'\n" + FAST_RECONCILE
        )
        point_at(path, sandbox, request_timeout=3.0)
        env = {**os.environ, "MM_TEST_SECRET": SECRET, "COLUMNS": "120"}
        rng = random.Random(2024)
        kills = 0
        command = ["run"]
        for _ in range(4):
            target = len(sandbox.delivered()) + rng.randint(40, 120)
            process = subprocess.Popen(
                [sys.executable, "-m", "mailmerge", *command, str(path)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while (
                len(sandbox.delivered()) < target and process.poll() is None and time.monotonic() < deadline
            ):
                time.sleep(0.02)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait(timeout=30)
            command = ["resume"]
        assert kills >= 3, "the runs finished before they could be killed"
        done = subprocess.run(
            [sys.executable, "-m", "mailmerge", "resume", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        _assert_exactly_once(sandbox, path, count)
    finally:
        sandbox.stop()


@pytest.mark.parametrize("assume", ["sent", "unsent"])
def test_unknowns_without_sent_items_copies_need_the_users_word(
    make_campaign, tmp_path: Path, assume: str
) -> None:
    faults = Faults(seed=3, accepted_but_error=Every(7), accepted_but_error_kinds=("504",))
    sandbox = _sandbox(tmp_path, Profile(limits=Limits.unlimited(), faults=faults))
    try:
        path = make_campaign(_rows(20), save_to_sent_items=False, limits="messages_per_minute = 'unlimited'")
        point_at(path, sandbox)
        env = {**os.environ, "MM_TEST_SECRET": SECRET}
        first = subprocess.run(
            [sys.executable, "-m", "mailmerge", "run", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert first.returncode == 10, first.stdout + first.stderr
        assert "save_to_sent_items = false" in first.stdout
        campaign = load_campaign(path)
        with open_store(campaign) as store:
            unknown = store.counts(store.campaign_id(campaign.name))[Status.UNKNOWN]
        assert unknown >= 2
        delivered_before = len(sandbox.delivered())
        sandbox.set_faults(Faults())
        second = subprocess.run(
            [sys.executable, "-m", "mailmerge", "resume", f"--assume-{assume}", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 0, second.stdout + second.stderr
        resent = len(sandbox.delivered()) - delivered_before
        assert resent == (unknown if assume == "unsent" else 0)
        with open_store(campaign) as store:
            events = [
                e
                for r in store.iter_report(1)
                for e in store.events_for(r["id"])
                if e["code"] == "UserDecision"
            ]
        assert len(events) == unknown
        assert all(f"--assume-{assume}" in e["detail"] for e in events)
    finally:
        sandbox.stop()


def test_two_workers_share_one_campaign_through_the_database(make_campaign, tmp_path: Path) -> None:
    """Two processes resume the same campaign at once: claims through the database keep them apart."""
    profile = Profile(limits=Limits.unlimited(), latency=Latency.uniform(0.002, 0.01))
    sandbox = _sandbox(tmp_path, profile)
    count = 400
    try:
        path = make_campaign(_rows(count), limits="messages_per_minute = 'unlimited'\n" + FAST_RECONCILE)
        point_at(path, sandbox)
        campaign = load_campaign(path)
        with open_store(campaign) as store:
            import_recipients(campaign, store)
        resume_in_parallel(path, 2)
        _assert_exactly_once(sandbox, path, count)
        with open_store(campaign) as store:
            owners = {
                event["worker"].rsplit(":", 1)[0]
                for r in store.iter_report(1)
                for event in store.events_for(r["id"])
                if event["to_status"] == "sending"
            }
        assert len(owners) == 2, "one worker did all the work; the test proves nothing"
    finally:
        sandbox.stop()

"""The store on PostgreSQL: the same code, several workers, claims through the database.

Uses ``MAILMERGE_TEST_POSTGRES_URL`` when set; otherwise starts a throwaway cluster with the
machine's PostgreSQL binaries (``.ci/run`` installs them); skipped only when neither exists.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from mailmerge.campaign import load_campaign
from mailmerge.clock import ManualClock
from mailmerge.recipients import Recipient
from mailmerge.runner import import_recipients, open_store
from mailmerge.sandbox import Limits, Profile
from mailmerge.store import Outcome, Status, Store
from tests.conftest import point_at
from tests.test_exactly_once import (
    FAST_RECONCILE,
    SECRET,
    _assert_exactly_once,
    _rows,
    _sandbox,
    resume_in_parallel,
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    """A server URL without a database name; one cluster for the module."""
    given = os.environ.get("MAILMERGE_TEST_POSTGRES_URL")
    if given:
        yield given.rsplit("/", 1)[0]
        return
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        pytest.skip("no PostgreSQL server: set MAILMERGE_TEST_POSTGRES_URL or install postgresql")
    bin_dir = Path(binaries[-1]).parent
    data = Path(tempfile.mkdtemp(prefix="mailmerge-pg-"))  # under /tmp, reachable by the postgres user
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "-l",
            str(data / "log"),
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh database for one test."""
    name = f"mm_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return f"{postgres_server}/{name}"


def _people(n: int) -> list[Recipient]:
    return [
        Recipient(row=i + 2, key=f"p{i}@x.example", email=f"p{i}@x.example", name=None, fields={})
        for i in range(n)
    ]


def test_claims_respect_the_limit_and_never_overlap_between_workers(postgres_url: str) -> None:
    store = Store(postgres_url, clock=ManualClock())
    cid = store.campaign_id("c")
    assert store.import_recipients(cid, _people(500)) == 500
    assert store.import_recipients(cid, _people(500)) == 0
    assert len(store.claim(cid, "a@x", 20, worker="probe", lease_seconds=60)) == 20
    claimed: dict[str, list[int]] = {}

    def worker(name: str) -> None:
        mine = claimed.setdefault(name, [])
        own = Store(postgres_url, clock=ManualClock())
        while batch := own.claim(cid, "a@x", 7, worker=name, lease_seconds=60):
            mine.extend(r.id for r in batch)
            own.record(cid, [Outcome(r.id, Status.SENT) for r in batch], worker=name)
        own.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [rid for ids in claimed.values() for rid in ids]
    assert len(ids) == len(set(ids)) == 480
    assert sum(1 for ids in claimed.values() if ids) >= 2
    assert store.counts(cid)[Status.SENT] == 480
    store.close()


def test_two_worker_processes_send_a_campaign_exactly_once(
    make_campaign, tmp_path: Path, postgres_url: str
) -> None:
    sandbox = _sandbox(tmp_path, Profile(limits=Limits.unlimited()))
    count = 300
    try:
        path = make_campaign(_rows(count), limits="messages_per_minute = 'unlimited'\n" + FAST_RECONCILE)
        path.write_text(
            path.read_text().replace('name = "test"\n', f'name = "test"\ndatabase = "{postgres_url}"\n', 1)
        )
        point_at(path, sandbox)
        campaign = load_campaign(path)
        with open_store(campaign) as store:
            import_recipients(campaign, store)
        resume_in_parallel(path, 2)
        _assert_exactly_once(sandbox, path, count)
        env = {**os.environ, "MM_TEST_SECRET": SECRET}
        status = subprocess.run(
            [sys.executable, "-m", "mailmerge", "status", "--json", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["counts"]["sent"] == count
        assert state["mailboxes"][0]["used_24h"] == count
        report = tmp_path / "report.csv"
        done = subprocess.run(
            [sys.executable, "-m", "mailmerge", "report", str(path), "-o", str(report)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert len(report.read_text().splitlines()) == count + 1
    finally:
        sandbox.stop()

"""`status` and `list`, right on 200,000 recipients by index probes only; reports in flat memory."""

from __future__ import annotations

import json
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import event

from mailmerge.campaign import load_campaign
from mailmerge.cli import main
from mailmerge.clock import ManualClock
from mailmerge.errors import ExitCode
from mailmerge.overview import DAY, campaign_status, estimate_finish
from mailmerge.recipients import Recipient
from mailmerge.report import write_report
from mailmerge.store import Status, Store
from tests.conftest import MakeCampaign
from tests.test_report_support import MAILBOXES, START, build_campaign, new_store

BIG = 200_000
NOW = START + 10 * DAY


def import_people(store: Store, campaign_id: int, count: int) -> None:
    for start in range(0, count, 10_000):
        store.import_recipients(
            campaign_id,
            [
                Recipient(row=i + 2, key=f"p{i}@x.example", email=f"p{i}@x.example", name=None, fields={})
                for i in range(start, min(count, start + 10_000))
            ],
        )


def shape_big_campaign(db: Path) -> None:
    """Give the imported rows the history of a campaign half sent over three days (test setup only)."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "update recipients set status = 'sent', attempts = 1,"
            " mailbox = case id % 2 when 0 then ? else ? end, last_attempt_at = ? - (150000 - id) * 1.5,"
            " first_attempt_at = ? - (150000 - id) * 1.5, sent_at = ? - (150000 - id) * 1.5"
            " where id <= 150000",
            (*MAILBOXES, NOW, NOW, NOW),
        )
        conn.execute(
            "update recipients set status = 'bounced', bounce_code = '5.1.1'"
            " where id <= 150000 and id % 1000 = 0"
        )
        conn.execute(
            "update recipients set status = 'failed', error_code = 'ErrorInvalidRecipients', attempts = 1,"
            " mailbox = ? where id > 150000 and id <= 155000",
            (MAILBOXES[0],),
        )
        conn.execute(
            "update recipients set status = 'unknown', attempts = 1, mailbox = ?, last_attempt_at = ? - 10,"
            " next_attempt_at = ? + 60 where id > 155000 and id <= 156000",
            (MAILBOXES[1], NOW, NOW),
        )
        conn.execute(
            "update recipients set attempts = 1, mailbox = ?, error_code = 'TooManyRequests',"
            " next_attempt_at = ? + 600 where id > 156000 and id <= 157000",
            (MAILBOXES[0], NOW),
        )


class Tracer:
    """Records every SELECT a store runs on recipients, to check how SQLite plans it."""

    def __init__(self, store: Store) -> None:
        self.statements: list[tuple[str, Any]] = []
        event.listen(store.engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "recipients" in statement:
            self.statements.append((statement, parameters))

    def plans(self, db: Path) -> list[str]:
        with sqlite3.connect(db) as conn:
            return [
                row[3]
                for statement, parameters in self.statements
                for row in conn.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            ]


def expected(db: Path, sql: str, *args: Any) -> Any:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def test_status_of_a_200k_campaign_is_right_and_uses_indexes_only(make_campaign: MakeCampaign) -> None:
    campaign_file = make_campaign(
        mailboxes=MAILBOXES, limits="messages_per_minute = 30\ndaily_recipients = 10000"
    )
    campaign = load_campaign(campaign_file)
    db = Path(campaign.database_url.removeprefix("sqlite:///"))
    store, _ = new_store(db)
    campaign_id = store.campaign_id("test")
    assert campaign_id is not None
    import_people(store, campaign_id, BIG)
    shape_big_campaign(db)
    tracer = Tracer(store)
    state = campaign_status(campaign, store, clock=ManualClock(NOW))

    counts = dict(expected(db, "select status, count(*) from recipients group by status"))
    assert {s.value: n for s, n in state.counts.items() if n} == counts
    for box in state.mailboxes:
        per_mailbox = dict(
            expected(
                db, "select status, count(*) from recipients where mailbox = ? group by status", box.mailbox
            )
        )
        assert {s.value: n for s, n in box.counts.items() if n} == per_mailbox
        ((used,),) = expected(
            db,
            "select coalesce(sum(recipient_count), 0) from recipients where mailbox = ?"
            " and status in ('sent', 'sending', 'unknown') and last_attempt_at >= ?",
            box.mailbox,
            NOW - DAY,
        )
        assert box.used_24h == used > box.daily_limit == 10_000
        assert box.left_24h == 0 and box.frees_at is not None and NOW <= box.frees_at <= NOW + DAY
    assert (state.retries_waiting, state.next_retry_at) == (1000, NOW + 600)
    assert (state.unknown_waiting, state.next_check_at) == (1000, NOW + 60)
    assert state.remaining == counts["pending"] + counts["unknown"] == 45_000
    # both mailboxes are at their daily limit: 45,000 more need 2.25 days at 20,000 a day
    assert state.finish_at == NOW + 2.25 * DAY
    assert "24-hour limit" in state.finish_basis

    plans = tracer.plans(db)
    assert plans and all(not p.startswith("SCAN") for p in plans), plans
    store.close()

    result = CliRunner().invoke(main, ["status", str(campaign_file), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["counts"]["sent"] == counts["sent"]
    assert document["retries"]["waiting"] == 1000
    assert {m["mailbox"] for m in document["mailboxes"]} == set(MAILBOXES)
    text = CliRunner().invoke(main, ["status", str(campaign_file)])
    assert text.exit_code == 0
    assert "estimated finish" in text.output and "retries waiting" in text.output


def test_status_adds_its_indexes_to_an_older_database(make_campaign: MakeCampaign) -> None:
    campaign_file = make_campaign()
    campaign = load_campaign(campaign_file)
    db = Path(campaign.database_url.removeprefix("sqlite:///"))
    store, clock = new_store(db)
    build_campaign(store, clock)
    store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("drop index ix_recipients_overview")
        conn.execute("drop index ix_recipients_bounce")
    result = CliRunner().invoke(main, ["status", str(campaign_file), "--json"])
    assert result.exit_code == 0, result.output
    names = {name for (name,) in expected(db, "select name from sqlite_master where type = 'index'")}
    assert {"ix_recipients_overview", "ix_recipients_bounce"} <= names


def test_estimate_finish() -> None:
    assert estimate_finish(0, NOW, per_minute=[30], left=[5], daily=[10])[0] is None
    at, _ = estimate_finish(600, NOW, per_minute=[30, 30], left=[None, None], daily=[None, None])
    assert at == NOW + 600  # 60 messages a minute
    at, _ = estimate_finish(600, NOW, per_minute=[30, 30], left=[1000, 1000], daily=[1000, 1000])
    assert at == NOW + 600
    at, basis = estimate_finish(2500, NOW, per_minute=[30], left=[500], daily=[1000])
    assert at == NOW + 1000 + 2 * DAY and "about 2.0 more days" in basis


def test_list_shows_every_campaign_of_a_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "state.db"
    store, clock = new_store(db)
    first = build_campaign(store, clock, name="spring")
    build_campaign(store, clock, name="autumn", rows=10)
    counts = store.counts(first)
    store.close()
    runner = CliRunner()
    result = runner.invoke(main, ["list", str(db), "--json"])
    assert result.exit_code == 0, result.output
    (listing,) = json.loads(result.output)
    spring, autumn = listing["campaigns"]
    assert (spring["name"], spring["total"], autumn["name"], autumn["total"]) == ("spring", 40, "autumn", 10)
    outstanding = counts[Status.PENDING] + counts[Status.UNKNOWN] + counts[Status.SENDING]
    assert spring["outstanding"] == outstanding
    assert spring["done"] == round((40 - outstanding) / 40, 4)
    by_url = runner.invoke(main, ["list", f"sqlite:///{db}"])
    assert by_url.exit_code == 0 and "spring" in by_url.output and "autumn" in by_url.output
    monkeypatch.chdir(tmp_path)
    here = runner.invoke(main, ["list"])
    assert here.exit_code == 0 and "spring" in here.output


def test_list_leaves_other_databases_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table notes (text)")
    runner = CliRunner()
    result = runner.invoke(main, ["list", str(other)])
    assert result.exit_code == ExitCode.STORE
    assert "holds no mailmerge campaigns" in result.output
    assert expected(other, "select name from sqlite_master") == [("notes",)]
    missing = runner.invoke(main, ["list", str(tmp_path / "missing.db")])
    assert missing.exit_code == ExitCode.STORE and not (tmp_path / "missing.db").exists()
    monkeypatch.chdir(tmp_path)
    nothing = runner.invoke(main, ["list"])
    assert nothing.exit_code == ExitCode.STORE and "mailmerge list path/to/campaign.db" in nothing.output


def report_peak(tmp_path: Path, rows: int, fmt: str) -> int:
    store = Store(f"sqlite:///{tmp_path / f'{rows}.db'}")
    campaign_id = store.campaign_id("c")
    assert campaign_id is not None
    import_people(store, campaign_id, rows)
    tracemalloc.start()
    try:
        with (tmp_path / f"{rows}.{fmt}").open("w", encoding="utf-8") as out:
            write_report(store, campaign_id, "c", fmt, out)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        store.close()


@pytest.mark.parametrize("fmt", ["csv", "json", "html"])
def test_reports_stream_in_flat_memory(tmp_path: Path, fmt: str) -> None:
    small, large = report_peak(tmp_path, 2_000, fmt), report_peak(tmp_path, 20_000, fmt)
    assert large < 1.5 * small + 512 * 1024

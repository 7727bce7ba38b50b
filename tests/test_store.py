from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailmerge.clock import ManualClock
from mailmerge.recipients import Recipient
from mailmerge.store import Outcome, Status, Store


def _people(n: int, start: int = 1) -> list[Recipient]:
    return [
        Recipient(row=i + 1, key=f"p{i}@x.example", email=f"p{i}@x.example", name=None, fields={"n": str(i)})
        for i in range(start, start + n)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'state.db'}", clock=ManualClock())
    yield s
    s.close()


def test_import_is_idempotent_by_key(store: Store) -> None:
    cid = store.campaign_id("c")
    assert store.import_recipients(cid, _people(10)) == 10
    assert store.import_recipients(cid, _people(12)) == 2
    assert store.counts(cid)[Status.PENDING] == 12


def test_claim_leases_each_recipient_once(store: Store) -> None:
    cid = store.campaign_id("c")
    store.import_recipients(cid, _people(5))
    first = store.claim(cid, "a@x", 3, worker="w1", lease_seconds=60)
    second = store.claim(cid, "b@x", 3, worker="w2", lease_seconds=60)
    assert [r.id for r in first] == [1, 2, 3]
    assert [r.id for r in second] == [4, 5]
    assert store.claim(cid, "a@x", 3, worker="w1", lease_seconds=60) == []
    assert store.counts(cid)[Status.SENDING] == 5


def test_record_is_guarded_by_lease_and_writes_events(store: Store) -> None:
    cid = store.campaign_id("c")
    store.import_recipients(cid, _people(2))
    (one, two) = store.claim(cid, "a@x", 2, worker="w1", lease_seconds=60)
    assert store.record(cid, [Outcome(one.id, Status.SENT)], worker="intruder") == 0
    assert (
        store.record(
            cid,
            [Outcome(one.id, Status.SENT), Outcome(two.id, Status.FAILED, "ErrorInvalidRecipients", "bad")],
            worker="w1",
        )
        == 2
    )
    counts = store.counts(cid)
    assert counts[Status.SENT] == 1 and counts[Status.FAILED] == 1
    history = [(e["from_status"], e["to_status"]) for e in store.events_for(two.id)]
    assert history == [("pending", "sending"), ("sending", "failed")]


def test_illegal_transition_is_refused(store: Store) -> None:
    cid = store.campaign_id("c")
    with pytest.raises(ValueError, match="not allowed"):
        store.record(cid, [Outcome(1, Status.SENDING)], worker="w", from_status=Status.SENT)


def test_stale_lease_of_dead_process_becomes_unknown(store: Store) -> None:
    cid = store.campaign_id("c")
    store.import_recipients(cid, _people(3))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    import socket

    dead_owner = f"{socket.gethostname()}:{dead.stdout.strip()}:x"
    store.claim(cid, "a@x", 2, worker=dead_owner, lease_seconds=3600)
    store.claim(cid, "a@x", 1, worker=f"{socket.gethostname()}:{os.getpid()}:alive", lease_seconds=3600)
    assert store.release_stale_leases(cid) == 2
    counts = store.counts(cid)
    assert counts[Status.UNKNOWN] == 2 and counts[Status.SENDING] == 1


def test_expired_lease_becomes_unknown(store: Store) -> None:
    cid = store.campaign_id("c")
    store.import_recipients(cid, _people(1))
    store.claim(cid, "a@x", 1, worker="otherhost:1:x", lease_seconds=10)
    assert store.release_stale_leases(cid) == 0
    store.clock.advance(11)
    assert store.release_stale_leases(cid) == 1


def test_retry_at_delays_claim(store: Store) -> None:
    cid = store.campaign_id("c")
    store.import_recipients(cid, _people(1))
    (r,) = store.claim(cid, "a@x", 1, worker="w", lease_seconds=60)
    store.record(
        cid, [Outcome(r.id, Status.PENDING, "HTTP503", "busy", retry_at=store.clock.time() + 30)], worker="w"
    )
    assert store.claim(cid, "a@x", 1, worker="w", lease_seconds=60) == []
    store.clock.advance(31)
    (again,) = store.claim(cid, "a@x", 1, worker="w", lease_seconds=60)
    assert again.attempts == 1


def test_daily_window_counts_across_campaigns(store: Store) -> None:
    one, two = store.campaign_id("one"), store.campaign_id("two")
    store.import_recipients(one, _people(3))
    store.import_recipients(two, _people(2, start=10))
    store.claim(one, "a@x", 3, worker="w", lease_seconds=60)
    store.claim(two, "a@x", 2, worker="w", lease_seconds=60)
    now = store.clock.time()
    assert store.recipients_in_window("a@x", now - 86_400) == 5
    assert store.recipients_in_window("b@x", now - 86_400) == 0
    store.clock.advance(86_401)
    assert store.recipients_in_window("a@x", store.clock.time() - 86_400) == 0


def test_retry_failed_and_assume(store: Store) -> None:
    cid = store.campaign_id("c")
    store.import_recipients(cid, _people(3))
    a, b, c = store.claim(cid, "a@x", 3, worker="w", lease_seconds=60)
    store.record(
        cid,
        [
            Outcome(a.id, Status.FAILED, "X"),
            Outcome(b.id, Status.FAILED, "Y"),
            Outcome(c.id, Status.UNKNOWN, "HTTP504"),
        ],
        worker="w",
    )
    assert store.retry_failed(cid, code="X") == 1
    assert store.resolve_unknown(cid, Status.SENT, reason="user chose") == 1
    counts = store.counts(cid)
    assert counts == {**counts, Status.PENDING: 1, Status.FAILED: 1, Status.SENT: 1}
    assert store.events_for(c.id)[-1]["code"] == "UserDecision"


def test_a_fixed_invalid_row_is_revived_not_duplicated(store: Store) -> None:
    from mailmerge.store import NewRecipient

    cid = store.campaign_id("c")
    broken = Recipient(
        row=3, key="\x1e3", email="not-an-address", name=None, fields={"email": "not-an-address"}
    )
    store.import_recipients(cid, [*_people(1), NewRecipient(broken, Status.INVALID, "not a valid address")])
    assert store.counts(cid)[Status.INVALID] == 1
    fixed = Recipient(
        row=3, key="fixed@x.example", email="fixed@x.example", name=None, fields={"email": "fixed@x.example"}
    )
    assert store.import_recipients(cid, [*_people(1), fixed]) == 1
    counts = store.counts(cid)
    assert counts[Status.INVALID] == 0
    assert counts[Status.PENDING] == 2
    assert sum(counts.values()) == 2
    revived = next(r for r in store.iter_report(cid) if r["row"] == 3)
    assert revived["email"] == "fixed@x.example" and revived["error_code"] is None
    assert [(e["from_status"], e["to_status"], e["code"]) for e in store.events_for(revived["id"])] == [
        ("invalid", "pending", "Revived")
    ]
    assert store.import_recipients(cid, [*_people(1), fixed]) == 0  # idempotent

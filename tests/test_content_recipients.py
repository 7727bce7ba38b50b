"""Who gets a message: address checks, display names, duplicates, suppression lists and filters."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailmerge.campaign import load_campaign
from mailmerge.errors import ConfigError
from mailmerge.recipients import Recipient, RowProblem
from mailmerge.runner import import_recipients, open_store, preflight
from mailmerge.store import Status
from tests.content_support import by_status, checks, entries, write_campaign

HEADER = "email,name,first_name,city\n"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("not-an-address", "not a valid address"),
        ("anna@@fabrikam.example", "not a valid address"),
        ("anna@fabrikam", "not a valid address"),
        ('"anna@fabrikam.example\nBcc: x@evil.example"', "line break"),
        ("", "the address is empty"),
    ],
)
def test_bad_addresses_are_problems_of_their_row(tmp_path: Path, address: str, expected: str) -> None:
    path = write_campaign(tmp_path, data=HEADER + "ok@fabrikam.example,A,A,X\n" + f"{address},B,B,Y\n")
    ok, bad = entries(path)
    assert isinstance(ok, Recipient)
    assert isinstance(bad, RowProblem) and bad.row == 3 and bad.column == "email"
    assert expected in bad.message


def test_internationalised_addresses_are_accepted_without_dns(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, data=HEADER + "zoë@exämple.de,Zoë,Zoë,Köln\n用户@例子.广告,李,李,北京\n")
    first, second = entries(path)
    assert first.email == "zoë@exämple.de" and second.email == "用户@例子.广告"


def test_display_name_with_a_line_break_is_refused(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, data=HEADER + 'a@fabrikam.example,"Anna\r\nBcc: x@evil.example",A,X\n')
    (problem,) = entries(path)
    assert (
        isinstance(problem, RowProblem) and problem.column == "name" and "header injection" in problem.message
    )


def test_duplicates_first_row_wins_and_case_does_not_matter(tmp_path: Path) -> None:
    data = HEADER + "anna@fabrikam.example,A,A,X\nbob@fabrikam.example,B,B,Y\nAnna@Fabrikam.example,A2,A,Z\n"
    path = write_campaign(tmp_path, data=data)
    rows = checks(path)
    assert [c.status for c in rows] == [Status.PENDING, Status.PENDING, Status.DUPLICATE]
    assert rows[2].reason == "the same key (anna@fabrikam.example) as row 2"


def test_an_invalid_row_does_not_take_its_key_from_a_later_valid_row(tmp_path: Path) -> None:
    data = "email,name,first_name,city\nanna@fabrikam.example,A,,X\nanna@fabrikam.example,A,Anna,X\n"
    assert by_status(write_campaign(tmp_path, data=data)) == {2: Status.INVALID, 3: Status.PENDING}


def test_duplicate_keys_over_several_columns(tmp_path: Path) -> None:
    data = (
        "email,name,first_name,city,order\n"
        "a@fabrikam.example,A,A,X,1\n"
        "a@fabrikam.example,A,A,X,2\n"
        "a@fabrikam.example,A,A,X,1\n"
    )
    path = write_campaign(tmp_path, data=data, recipients={"key": ["email", "order"]})
    assert by_status(path) == {2: Status.PENDING, 3: Status.PENDING, 4: Status.DUPLICATE}


def test_suppression_files_and_patterns(tmp_path: Path) -> None:
    data = HEADER + "".join(
        f"{address},N,N,X\n"
        for address in (
            "keep@fabrikam.example",
            "Gone@Fabrikam.example",
            "plain@fabrikam.example",
            "spy@competitor.example",
            "boss@sub.rival.example",
            "ok@rival.example",
        )
    )
    path = write_campaign(
        tmp_path,
        data=data,
        recipients={
            "suppress": ["unsubscribed.csv", "bounced.txt", "*@competitor.example", "@*.rival.example"]
        },
        files={
            "unsubscribed.csv": "Date;E-mail\n2024-01-01;gone@fabrikam.example\n",
            "bounced.txt": "plain@fabrikam.example\nnobody@fabrikam.example\n",
        },
    )
    rows = {c.row: c for c in checks(path)}
    assert {row: c.status for row, c in rows.items()} == {
        2: Status.PENDING,
        3: Status.SUPPRESSED,
        4: Status.SUPPRESSED,
        5: Status.SUPPRESSED,
        6: Status.SUPPRESSED,
        7: Status.PENDING,
    }
    assert rows[3].reason == "suppressed: listed in unsubscribed.csv"
    assert rows[4].reason == "suppressed: listed in bounced.txt"
    assert rows[5].reason == "suppressed: matches '*@competitor.example'"


def test_a_missing_suppression_file_is_a_config_error(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, recipients={"suppress": ["nowhere.csv"]})
    with pytest.raises(ConfigError, match=r"nowhere\.csv") as caught:
        checks(path)
    assert caught.value.context == "[recipients] suppress"


def test_where_filters_rows_before_they_are_checked(tmp_path: Path) -> None:
    data = (
        "email,name,first_name,Home Country,age,zip\n"
        "nl@fabrikam.example,A,A,NL,34,01234\n"
        "de@fabrikam.example,B,B,DE,51,10115\n"
        "not-an-address,C,C,DE,20,10115\n"  # left out by the filter: not a problem
        "young@fabrikam.example,D,D,NL,17,01234\n"
    )
    path = write_campaign(
        tmp_path,
        data=data,
        recipients={"where": "`Home Country` == 'NL' and age >= 18 and zip == '01234'"},
        html="Hi {{ first_name }}",
        text="Hi {{ first_name }}",
    )
    assert [e.email for e in entries(path)] == ["nl@fabrikam.example"]
    result = preflight(load_campaign(path))
    assert (result.rows, result.filtered_out, result.ok) == (1, 3, True)

    path = write_campaign(tmp_path, data=data, recipients={"where": "home_country != 'NL'"})
    kept = entries(path)
    assert [e.row for e in kept] == [3, 4] and isinstance(kept[1], RowProblem)  # now the bad address counts


@pytest.mark.parametrize(
    "where",
    ["country == 'NL'", "age >=", "first_name"],
    ids=["unknown-column", "syntax", "not-a-condition"],
)
def test_a_bad_filter_is_a_config_error(tmp_path: Path, where: str) -> None:
    path = write_campaign(tmp_path, recipients={"where": where})
    with pytest.raises(ConfigError) as caught:
        entries(path)
    assert caught.value.context == "[recipients] where"


def _import(path: Path, *, skip_invalid: bool) -> dict[int, tuple[str, str | None]]:
    campaign = load_campaign(path)
    with open_store(campaign) as store:
        first = import_recipients(campaign, store, skip_invalid=skip_invalid)
        again = import_recipients(campaign, store, skip_invalid=skip_invalid)
    assert again == (0, first[1])  # importing twice adds nothing
    with sqlite3.connect(path.with_suffix(".db")) as db:
        rows = db.execute("select row, status, error_message from recipients").fetchall()
    return {row: (status, reason) for row, status, reason in rows}


IMPORTED = HEADER + (
    "anna@fabrikam.example,A,A,X\n"
    "anna@fabrikam.example,A,A,X\n"
    "spy@competitor.example,S,S,X\n"
    "bad-address,B,B,X\n"
    "jose@fabrikam.example,J,J,\n"  # {{ city }} is undefined: invalid once rendered
)


def test_import_records_duplicates_and_suppressions(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, data=IMPORTED, recipients={"suppress": ["*@competitor.example"]})
    stored = _import(path, skip_invalid=False)
    # Without --skip-invalid, pre-flight has refused a list with invalid rows; an unreadable row is
    # left out, and rendering is not repeated (the engine refuses a row that still fails to render).
    assert {row: status for row, (status, _) in stored.items()} == {
        2: "pending",
        3: "duplicate",
        4: "suppressed",
        6: "pending",
    }
    assert stored[3] == ("duplicate", "the same key (anna@fabrikam.example) as row 2")
    assert stored[4] == ("suppressed", "suppressed: matches '*@competitor.example'")


def test_import_with_skip_invalid_records_invalid_rows_and_why(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, data=IMPORTED, recipients={"suppress": ["*@competitor.example"]})
    stored = _import(path, skip_invalid=True)
    assert {row: status for row, (status, _) in stored.items()} == {
        2: "pending",
        3: "duplicate",
        4: "suppressed",
        5: "invalid",
        6: "invalid",
    }
    assert stored[5] == (
        "invalid",
        "'bad-address' is not a valid address: An email address must have an @-sign.",
    )
    assert "'city' is undefined" in (stored[6][1] or "")

"""CSV, Excel and JSON reports, parsed back and compared with the database they came from."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from openpyxl import load_workbook

from mailmerge.campaign import load_campaign
from mailmerge.cli import main
from mailmerge.report import COLUMNS, FORMULA_STARTS, ReportOptions, write_report
from mailmerge.store import Status
from tests.conftest import MakeCampaign
from tests.test_report_support import build_campaign, database_rows, new_store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def campaign_db(tmp_path: Path, make_campaign: MakeCampaign) -> tuple[Path, Path, int]:
    """A campaign file and its database, holding a campaign in which every status occurs."""
    campaign_file = make_campaign()
    db = Path(load_campaign(campaign_file).database_url.removeprefix("sqlite:///"))
    store, clock = new_store(db)
    campaign_id = build_campaign(store, clock)
    store.close()
    return campaign_file, db, campaign_id


def iso(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="seconds")


def shown(value: Any) -> str:
    """How a database value appears in a neutralised CSV cell."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def run_report(campaign_file: Path, out: Path, *args: str) -> None:
    result = CliRunner().invoke(main, ["report", str(campaign_file), "-o", str(out), *args])
    assert result.exit_code == 0, result.output


def test_csv_has_every_recipient_as_the_database_records_it(campaign_db: tuple[Path, Path, int]) -> None:
    campaign_file, db, campaign_id = campaign_db
    out = campaign_file.with_name("report.csv")
    run_report(campaign_file, out, "--format", "csv")
    rows = read_csv_rows(out)
    expected = database_rows(db, campaign_id)
    assert len(rows) == len(expected) == 40
    assert list(rows[0]) == list(COLUMNS)
    for got, want in zip(rows, expected, strict=True):
        assert got["row"] == str(want["row"])
        assert got["email"] == want["email"]
        assert got["name"] == shown(want["name"])
        assert got["status"] == want["status"]
        assert got["attempts"] == str(want["attempts"])
        assert got["mailbox"] == (want["mailbox"] or "")
        assert got["sent_at"] == iso(want["sent_at"])
        assert got["last_attempt_at"] == iso(want["last_attempt_at"])
        assert got["error_code"] == (want["error_code"] or "")
        assert got["bounce_code"] == (want["bounce_code"] or "")
        assert got["bounce_diagnostic"] == shown(want["bounce_diagnostic"])
        assert got["tag"] == want["tag"]
    assert {r["status"] for r in rows} == {s.value for s in Status} - {"sending"}


def test_csv_cells_never_start_like_a_formula(campaign_db: tuple[Path, Path, int]) -> None:
    campaign_file, _, _ = campaign_db
    out = campaign_file.with_name("report.csv")
    run_report(campaign_file, out, "--with-columns")
    cells = [cell for row in read_csv(out) for cell in row]
    assert not [c for c in cells if c.startswith(FORMULA_STARTS)]
    assert '\'=HYPERLINK("http://evil.example","click")' in cells
    assert "'\tTabbed" in cells and "'@SUM(A1:A9)" in cells and "'-3+4" in cells


def test_original_columns_come_back_for_merging(campaign_db: tuple[Path, Path, int]) -> None:
    campaign_file, db, campaign_id = campaign_db
    out = campaign_file.with_name("report.json")
    run_report(campaign_file, out, "--format", "json", "--with-columns")
    document = json.loads(out.read_text(encoding="utf-8"))
    expected = database_rows(db, campaign_id)
    assert [r["fields"] for r in document["recipients"]] == [json.loads(r["fields"]) for r in expected]

    csv_out = campaign_file.with_name("report.csv")
    run_report(campaign_file, csv_out, "--with-columns")
    header = read_csv(csv_out)[0]
    # the spreadsheet's own columns follow the report's; names the report already uses are prefixed
    assert header[len(COLUMNS) :] == ["source:email", "source:name", "city", "zip"]


def test_status_filter_is_repeatable_and_keeps_spreadsheet_order(
    campaign_db: tuple[Path, Path, int],
) -> None:
    campaign_file, db, campaign_id = campaign_db
    out = campaign_file.with_name("problems.csv")
    run_report(campaign_file, out, "--status", "failed", "--status", "bounced")
    rows = read_csv_rows(out)
    expected = [r for r in database_rows(db, campaign_id) if r["status"] in ("failed", "bounced")]
    assert [int(r["row"]) for r in rows] == [r["row"] for r in expected]
    assert {r["status"] for r in rows} == {"failed", "bounced"}


def test_json_report_matches_the_database_and_its_documented_schema(
    campaign_db: tuple[Path, Path, int],
) -> None:
    campaign_file, db, campaign_id = campaign_db
    out = campaign_file.with_name("report.json")
    run_report(campaign_file, out, "--format", "json", "--status", "sent")
    document = json.loads(out.read_text(encoding="utf-8"))
    expected = database_rows(db, campaign_id)
    assert document["schema_version"] == 1
    assert document["campaign"] == "test"
    assert document["filter"] == {"status": ["sent"]}
    summary = document["summary"]
    assert summary["total"] == len(expected)
    for status in Status:
        assert summary["by_status"][status.value] == sum(r["status"] == status.value for r in expected)
    assert summary["included"] == summary["by_status"]["sent"] == len(document["recipients"])
    sent = [r for r in expected if r["status"] == "sent"]
    for got, want in zip(document["recipients"], sent, strict=True):
        assert (got["row"], got["email"], got["name"], got["tag"]) == (
            want["row"],
            want["email"],
            want["name"],
            want["tag"],
        )
        assert datetime.fromisoformat(got["sent_at"]).timestamp() == want["sent_at"]
    soft = [r for r in document["recipients"] if r["bounce_code"]]
    assert [r["bounce_code"] for r in soft] == ["4.4.7"]
    fixes = {(p["status"], p["code"]): p["fix"] for p in summary["problems"]}
    assert "check the address" in fixes[("failed", "ErrorInvalidRecipients")].lower()
    assert f"mailmerge resume {campaign_file}" in fixes[("unknown", "HTTP504")]
    schema = json.loads((REPO / "docs" / "report.schema.json").read_text(encoding="utf-8"))
    conforms(document, schema, schema)


def conforms(value: Any, schema: dict[str, Any], root: dict[str, Any], where: str = "$") -> None:
    """Check ``value`` against the subset of JSON Schema the report's schema uses."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    kinds = schema.get("type")
    if kinds is not None:
        allowed = kinds if isinstance(kinds, list) else [kinds]
        python = {
            "object": dict,
            "array": list,
            "string": str,
            "integer": int,
            "number": (int, float),
            "boolean": bool,
            "null": type(None),
        }
        assert any(isinstance(value, python[k]) for k in allowed), f"{where}: {value!r} is not {allowed}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{where}: lacks {name}"
        for name, item in value.items():
            if name in schema.get("properties", {}):
                conforms(item, schema["properties"][name], root, f"{where}.{name}")
            elif isinstance(schema.get("additionalProperties"), dict):
                conforms(item, schema["additionalProperties"], root, f"{where}.{name}")
            else:
                assert schema.get("additionalProperties", True) is not False, f"{where}: unexpected {name}"
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            conforms(item, schema["items"], root, f"{where}[{index}]")


def test_excel_report_is_typed_filtered_frozen_and_inert(campaign_db: tuple[Path, Path, int]) -> None:
    campaign_file, db, campaign_id = campaign_db
    out = campaign_file.with_name("report.xlsx")
    run_report(campaign_file, out, "--format", "xlsx", "--with-columns")
    book = load_workbook(out)
    sheet = book["Recipients"]
    rows = list(sheet.iter_rows())
    expected = database_rows(db, campaign_id)
    header = [c.value for c in rows[0]]
    assert header[: len(COLUMNS)] == list(COLUMNS)
    assert sheet.auto_filter.ref == f"A1:{rows[0][-1].column_letter}{len(expected) + 1}"
    assert sheet.freeze_panes == "A2"
    assert len(rows) == len(expected) + 1
    at = {name: index for index, name in enumerate(header)}
    for cells, want in zip(rows[1:], expected, strict=True):
        assert cells[at["row"]].value == want["row"] and cells[at["row"]].data_type == "n"
        assert cells[at["attempts"]].value == want["attempts"]
        if want["sent_at"] is not None:
            sent = cells[at["sent_at"]].value
            assert isinstance(sent, datetime)
            assert sent.replace(tzinfo=UTC).timestamp() == pytest.approx(want["sent_at"], abs=0.001)
        # text is kept exactly, never as a formula, and Excel's quote prefix marks the risky ones
        name = cells[at["name"]]
        assert name.value == want["name"]
        assert name.data_type == "s"
        assert name.quotePrefix == want["name"].startswith(FORMULA_STARTS)
        assert cells[at["city"]].value == json.loads(want["fields"])["city"]
    assert not [c for row in rows for c in row if c.data_type == "f"]
    summary = [[c.value for c in row] for row in book["Summary"].iter_rows()]
    assert summary[0][:2] == ["Campaign", "test"]
    assert ["sent", sum(r["status"] == "sent" for r in expected)] in [r[:2] for r in summary]


def test_excel_report_can_stream_to_a_pipe(campaign_db: tuple[Path, Path, int]) -> None:
    campaign_file, _, _ = campaign_db
    result = CliRunner().invoke(main, ["report", str(campaign_file), "--format", "xlsx"])
    assert result.exit_code == 0
    book = load_workbook(io.BytesIO(result.stdout_bytes))
    assert book["Recipients"].max_row == 41


def test_write_report_stays_usable_from_python(tmp_path: Path) -> None:
    store, clock = new_store(tmp_path / "state.db")
    campaign_id = build_campaign(store, clock, rows=12)
    buffer = io.StringIO()
    count = write_report(store, campaign_id, "test", "csv", buffer)
    assert count == 12 == len(buffer.getvalue().splitlines()) - 1
    options = ReportOptions(statuses=frozenset({Status.INVALID}))
    assert write_report(store, campaign_id, "test", "json", io.StringIO(), options) == 1
    with pytest.raises(ValueError, match="unknown report format"):
        write_report(store, campaign_id, "test", "pdf", io.StringIO())

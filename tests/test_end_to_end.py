"""The whole pipeline through the CLI, against the embedded emulator over HTTPS with real msal."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from mailmerge.cli import main
from mailmerge.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A private copy of the shipped sample campaign (campaign file, data, templates)."""
    shutil.copytree(
        REPO / "campaigns", tmp_path / "campaigns", ignore=shutil.ignore_patterns("*.db*", "*.sandbox")
    )
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    return tmp_path / "campaigns" / "welcome.toml"


def delivered(campaign_file: Path) -> list[dict]:
    """What the emulator accepted, read back from its outbox folder."""
    outbox = campaign_file.with_name(f"{campaign_file.stem}.sandbox")
    files = [p for p in outbox.rglob("*.json") if p.parent != outbox]
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(files)]


def statuses(db: Path) -> Counter:
    with sqlite3.connect(db) as conn:
        return Counter(status for (status,) in conn.execute("select status from recipients"))


def test_demo_sends_each_sample_recipient_exactly_once(sample: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(sample), "--sandbox"])
    assert result.exit_code == 0, result.output
    rows = (sample.parent / "data" / "welcome.csv").read_text(encoding="utf-8").splitlines()[1:]
    messages = delivered(sample)
    addresses = Counter(r for m in messages for r in m["recipients"])
    assert len(messages) == len(rows) == 30
    assert set(addresses.values()) == {1}
    by_address = {m["recipients"][0]: m for m in messages}
    jose = by_address["jose.garcia@fabrikam.example"]
    assert jose["subject"] == "Welcome to Contoso, José!"
    assert "Sevilla" in jose["message"]["body"]["content"]
    assert jose["message"]["toRecipients"][0]["emailAddress"]["name"] == "José García"
    assert statuses(sample.with_suffix(".db")) == {"sent": 30}

    again = runner.invoke(main, ["run", str(sample), "--sandbox"])
    assert again.exit_code == 0, again.output
    assert "already sent" in again.output
    assert len(delivered(sample)) == 30

    status = runner.invoke(main, ["status", str(sample), "--json"])
    assert json.loads(status.output)["counts"]["sent"] == 30

    report_file = sample.parent / "report.csv"
    report = runner.invoke(main, ["report", str(sample), "--format", "csv", "-o", str(report_file)])
    assert report.exit_code == 0, report.output
    lines = report_file.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("row,key,email,name,status,attempts")
    assert len(lines) == 31
    assert any(",sent,1," in line and "jose.garcia@fabrikam.example" in line for line in lines)


def test_missing_variable_on_last_row_sends_nothing(sample: Path) -> None:
    data = sample.parent / "data" / "welcome.csv"
    lines = data.read_text(encoding="utf-8").splitlines()
    lines[-1] = lines[-1].rsplit(",", 1)[0] + ","  # the last row loses its plan
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(sample), "--sandbox"])
    assert result.exit_code == ExitCode.INPUT
    assert "1 of 30 rows cannot be sent" in result.output
    assert (
        "row 31" in result.output
        and "'plan' is undefined" in result.output
        and "html template, line 5" in result.output
    )
    assert "nothing was sent" in result.output
    assert delivered(sample) == []
    assert not sample.with_suffix(".db").exists()


def test_bad_campaign_file_is_a_clear_error(sample: Path) -> None:
    sample.write_text(sample.read_text().replace("batch_size = 20", "batch_size = 25"), encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(sample), "--sandbox"])
    assert result.exit_code == ExitCode.CONFIG
    assert "[limits] batch_size" in result.output
    assert "Traceback" not in result.output

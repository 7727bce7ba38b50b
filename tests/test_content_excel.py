"""Excel recipient lists: cells rendered as Excel shows them, sheets by name or number, streaming."""

from __future__ import annotations

import zipfile
from datetime import date, datetime, time
from pathlib import Path

import openpyxl
import pytest

from mailmerge import recipients as recipients_module
from mailmerge.campaign import load_campaign
from mailmerge.errors import ConfigError, InputError
from mailmerge.recipients import Recipient, RecipientSource
from mailmerge.tables import _open_calamine
from tests.content_support import entries, render_rows, write_campaign

HEADER = [
    "email",
    "name",
    "first_name",
    "count",
    "half",
    "sum",
    "due",
    "starts",
    "at",
    "vip",
    "share",
    "zip",
    "note",
]


def _workbook(path: Path, rows: list[list[object]], *, formats: dict[str, str] | None = None) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "People"
    for row in rows:
        sheet.append(row)
    for cell, number_format in (formats or {}).items():
        sheet[cell].number_format = number_format
    book.create_sheet("Other").append(["email", "name"])
    book["Other"].append(["other@fabrikam.example", "Other"])
    book.save(path)
    return path


def _typed_rows() -> list[list[object]]:
    return [
        HEADER,
        [
            "anna@fabrikam.example",
            "Anna",
            "Anna",
            3,
            3.0,
            0.1 + 0.2,
            date(2024, 3, 5),
            datetime(2024, 3, 5, 14, 30),
            time(9, 15),
            True,
            0.15,
            1234,
            None,
        ],
        [],  # an empty row: not a recipient, but row numbers go on
        ["jose@fabrikam.example", "José", "José", 7, 2.5, -1.25, None, None, None, False, 1, 99, "#N/A"],
    ]


def test_cells_read_as_a_person_sees_them(tmp_path: Path) -> None:
    _workbook(tmp_path / "people.xlsx", _typed_rows(), formats={"K2": "0%", "L2": "00000", "K4": "0.0%"})
    path = write_campaign(tmp_path, data=None, source="people.xlsx")
    first, second = entries(path)
    assert isinstance(first, Recipient) and isinstance(second, Recipient)
    assert first.fields == {
        "email": "anna@fabrikam.example",
        "name": "Anna",
        "first_name": "Anna",
        "count": "3",
        "half": "3",
        "sum": "0.3",
        "due": "2024-03-05",
        "starts": "2024-03-05 14:30",
        "at": "09:15",
        "vip": "TRUE",
        "share": "15%",
        "zip": "01234",
        "note": "",
    }
    assert second.row == 4
    assert (second.fields["half"], second.fields["sum"], second.fields["vip"]) == ("2.5", "-1.25", "FALSE")
    assert second.fields["share"] == "100.0%"
    assert second.fields["note"] == ""  # an Excel error value is no text to send


def test_an_empty_cell_stays_undefined_in_templates(tmp_path: Path) -> None:
    _workbook(tmp_path / "people.xlsx", _typed_rows())
    path = write_campaign(
        tmp_path,
        data=None,
        source="people.xlsx",
        html='{{ note | default("no note") }} {{ count }} {{ due | date("d MMMM y") }}',
        text="{{ due }}",
    )
    rendered = render_rows(path)
    assert rendered[2].html == "no note 3 5 March 2024"
    assert "'due' is undefined" in rendered[4].message  # José has no due date: his row is refused


def test_formulas_are_read_as_their_saved_values(tmp_path: Path) -> None:
    workbook = _workbook(
        tmp_path / "people.xlsx", [["email", "name", "n", "double"], ["a@fabrikam.example", "A", 21, "=C2*2"]]
    )
    # openpyxl cannot calculate; Excel saves the value beside the formula, as written here.
    with zipfile.ZipFile(workbook) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    sheet = parts["xl/worksheets/sheet1.xml"].decode()
    assert "<f>C2*2</f><v></v>" in sheet
    parts["xl/worksheets/sheet1.xml"] = sheet.replace("<f>C2*2</f><v></v>", "<f>C2*2</f><v>42</v>").encode()
    with zipfile.ZipFile(workbook, "w") as archive:
        for name, content in parts.items():
            archive.writestr(name, content)
    (entry,) = entries(write_campaign(tmp_path, data=None, source="people.xlsx"))
    assert entry.fields["double"] == "42"


@pytest.mark.parametrize("sheet", ["Other", "other", 1])
def test_sheet_by_name_or_number(tmp_path: Path, sheet: str | int) -> None:
    _workbook(tmp_path / "people.xlsx", _typed_rows())
    path = write_campaign(tmp_path, data=None, source="people.xlsx", recipients={"sheet": sheet})
    (entry,) = entries(path)
    assert entry.email == "other@fabrikam.example"


def test_a_missing_sheet_lists_the_sheets(tmp_path: Path) -> None:
    _workbook(tmp_path / "people.xlsx", _typed_rows())
    path = write_campaign(tmp_path, data=None, source="people.xlsx", recipients={"sheet": "Customers"})
    with pytest.raises(ConfigError) as caught:
        entries(path)
    assert "no sheet named 'Customers'" in caught.value.message and "'People', 'Other'" in (
        caught.value.hint or ""
    )


def test_spaces_in_excel_headers_are_trimmed(tmp_path: Path) -> None:
    _workbook(
        tmp_path / "people.xlsx", [[" email", "name ", "First Name "], ["a@fabrikam.example", "A", "Anna"]]
    )
    path = write_campaign(tmp_path, data=None, source="people.xlsx", html="{{ first_name }}", text="x")
    source = RecipientSource(load_campaign(path))
    (chunk,) = list(source.chunks())
    assert chunk[0].fields == {"email": "a@fabrikam.example", "name": "A", "First Name": "Anna"}
    assert "were trimmed" in source.warnings[0]


def test_a_file_that_is_not_a_workbook_is_an_input_error(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, data="email\nnot really excel\n", source="people.xlsx")
    with pytest.raises(InputError, match=r"cannot read people\.xlsx as an Excel workbook"):
        entries(path)


def test_big_workbooks_stream_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipients_module, "CHUNK_ROWS", 1_000)
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("People")
    sheet.append(["email", "name", "first_name", "city"])
    for i in range(2_500):
        sheet.append([f"p{i}@fabrikam.example", f"P {i}", f"P{i}", "Oslo"])
    book.save(tmp_path / "people.xlsx")
    source = RecipientSource(load_campaign(write_campaign(tmp_path, data=None, source="people.xlsx")))
    chunks = source.chunks()
    first = next(chunks)  # the reader hands out the first chunk before reading the rest
    assert len(first) == 1_000 and first[0].row == 2
    rest = list(chunks)
    assert [len(c) for c in rest] == [1_000, 500] and rest[-1][-1].row == 2_501


def test_xls_and_ods_reader_renders_cells_the_same_way(tmp_path: Path) -> None:
    """.xls, .xlsb and .ods go through python-calamine, which reads .xlsx too: same cells, same text."""
    workbook = _workbook(tmp_path / "people.xlsx", _typed_rows())
    table = _open_calamine(workbook, "People", "[recipients] source")
    rows = list(table.rows)
    assert table.header[:3] == ["email", "name", "first_name"]
    assert rows[0].row == 2 and rows[0].cells[3:10] == [
        "3",
        "3",
        "0.3",
        "2024-03-05",
        "2024-03-05 14:30",
        "09:15",
        "TRUE",
    ]
    assert rows[2].row == 4 and rows[2].cells[0] == "jose@fabrikam.example"

"""Recipient lists as real spreadsheets write them: every encoding, delimiter and quoting style."""

from __future__ import annotations

import codecs
import tracemalloc
from pathlib import Path

import pytest

from mailmerge import recipients as recipients_module
from mailmerge import tables
from mailmerge.campaign import load_campaign
from mailmerge.errors import ConfigError, InputError
from mailmerge.recipients import Recipient, RecipientSource, RowProblem
from tests.content_support import entries, render_rows, write_campaign

ROWS = "email,name,first_name,city\nzoe@fabrikam.example,Zoë Dupont,Zoë,Besançon €\n"


def _source(path: Path) -> RecipientSource:
    source = RecipientSource(load_campaign(path))
    for _ in source.chunks():
        pass
    return source


@pytest.mark.parametrize(
    ("data", "described"),
    [
        (ROWS.encode("utf-8"), "UTF-8"),
        (codecs.BOM_UTF8 + ROWS.encode("utf-8"), "UTF-8 with BOM"),
        (ROWS.replace(",", "\t").encode("utf-16"), "UTF-16"),  # Excel's "Unicode text"
        (ROWS.encode("utf-16-le"), "UTF-16 (little-endian, no BOM)"),
        (ROWS.replace("\n", "\r\n").encode("cp1252"), "Windows-1252"),
    ],
    ids=["utf8", "utf8-bom", "utf16-bom-tab", "utf16le-no-bom", "cp1252-crlf"],
)
def test_encodings_are_detected(tmp_path: Path, data: bytes, described: str) -> None:
    path = write_campaign(tmp_path, data=data)
    (entry,) = entries(path)
    assert isinstance(entry, Recipient)
    assert entry.name == "Zoë Dupont"
    assert entry.fields["city"] == "Besançon €"
    assert _source(path).description.startswith(described)


def test_a_non_utf8_byte_on_the_last_row_is_still_detected(tmp_path: Path) -> None:
    body = "".join(f"p{i}@fabrikam.example,P {i},P{i},Oslo\n" for i in range(3000))
    data = ("email,name,first_name,city\n" + body + "z@fabrikam.example,Zoë,Zoë,Århus\n").encode("cp1252")
    path = write_campaign(tmp_path, data=data)
    last = entries(path)[-1]
    assert isinstance(last, Recipient) and last.fields["city"] == "Århus" and last.row == 3002


def test_encoding_key_is_obeyed_and_a_wrong_one_names_file_and_line(tmp_path: Path) -> None:
    data = "email,name,first_name,city\na@fabrikam.example,Ø,Ø,Bergen\n".encode("latin-1")
    path = write_campaign(tmp_path, data=data, recipients={"encoding": "latin-1"})
    assert entries(path)[0].fields["first_name"] == "Ø"

    path = write_campaign(tmp_path, data=data, recipients={"encoding": "utf-8"})
    with pytest.raises(InputError) as caught:
        entries(path)
    assert "people.csv" in str(caught.value) and "line 2" in str(caught.value)
    assert "encoding" in (caught.value.hint or "")


def test_unknown_encoding_is_a_config_error(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, recipients={"encoding": "klingon"})
    with pytest.raises(ConfigError, match=r"\[recipients\] encoding"):
        load_campaign(path)


@pytest.mark.parametrize("delimiter", [";", "\t", "|", ","])
def test_delimiters_are_detected_even_with_other_delimiters_inside_values(
    tmp_path: Path, delimiter: str
) -> None:
    header = delimiter.join(["email", "name", "first_name", "city"])
    row = delimiter.join(["a@fabrikam.example", '"Dupont, Zoë; Jr | II"', "Zoë", "Lyon"])
    path = write_campaign(tmp_path, data=f"{header}\n{row}\n")
    (entry,) = entries(path)
    assert isinstance(entry, Recipient)
    assert entry.name == "Dupont, Zoë; Jr | II"
    assert entry.fields["city"] == "Lyon"


def test_delimiter_key_overrides_detection(tmp_path: Path) -> None:
    # One column only, whose values contain commas: detection cannot know, the key says so.
    path = write_campaign(
        tmp_path,
        data="email;note\na@fabrikam.example;x,y,z\n",
        recipients={"delimiter": "semicolon", "name": None},
        html="{{ note }}",
        text="{{ note }}",
    )
    (entry,) = entries(path)
    assert entry.fields == {"email": "a@fabrikam.example", "note": "x,y,z"}


def test_excels_sep_line_is_honoured_and_hidden(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, data="sep=;\nemail;name;first_name;city\na@fabrikam.example;A;A;Oslo\n")
    (entry,) = entries(path)
    assert isinstance(entry, Recipient) and entry.row == 2 and entry.fields["city"] == "Oslo"


def test_quotes_commas_and_newlines_inside_values_with_crlf(tmp_path: Path) -> None:
    data = (
        "email,name,first_name,city\r\n"
        'a@fabrikam.example,"Dupont, ""Zoë""","Zoë","Rue de la Paix 1\r\n75002 Paris"\r\n'
        "b@fabrikam.example,B,B,Oslo\r\n"
    )
    path = write_campaign(tmp_path, data=data, text="{{ name }} / {{ city }}")
    first, second = entries(path)
    assert first.name == 'Dupont, "Zoë"'
    assert first.fields["city"] == "Rue de la Paix 1\r\n75002 Paris"
    assert second.row == 3  # one row in a spreadsheet, though it spans two lines of the file
    assert render_rows(path)[2].text == 'Dupont, "Zoë" / Rue de la Paix 1\r\n75002 Paris'


def test_blank_rows_keep_spreadsheet_numbering_and_are_not_recipients(tmp_path: Path) -> None:
    data = "email,name,first_name,city\na@fabrikam.example,A,A,X\n\n,,,\nb@fabrikam.example,B,B,Y\n\n\n"
    rows = [entry.row for entry in entries(write_campaign(tmp_path, data=data))]
    assert rows == [2, 5]


def test_unclosed_quote_names_the_file_and_the_line_it_opens_on(tmp_path: Path) -> None:
    data = (
        "email,name,first_name,city\n"
        "a@fabrikam.example,A,A,X\n"
        'b@fabrikam.example,"B,B,Y\n'
        "c@fabrikam.example,C,C,Z\n"
    )
    with pytest.raises(InputError) as caught:
        entries(write_campaign(tmp_path, data=data))
    assert "people.csv, line 3" in caught.value.message and "never closed" in caught.value.message


def test_stray_quote_inside_a_value_names_the_line(tmp_path: Path) -> None:
    data = 'email,name,first_name,city\na@fabrikam.example,"A" B,A,X\n'
    with pytest.raises(InputError, match=r"people\.csv, line 2"):
        entries(write_campaign(tmp_path, data=data))


def test_ragged_rows_are_problems_naming_the_line(tmp_path: Path) -> None:
    data = (
        "email,name,first_name,city\n"
        "a@fabrikam.example,Dupont, Zoë,Zoë,Lyon\n"  # an unquoted comma: one value too many
        "b@fabrikam.example,B,B\n"  # one value short
        "c@fabrikam.example,C,C,Oslo,\n"  # a trailing delimiter is harmless
    )
    first, second, third = entries(write_campaign(tmp_path, data=data))
    assert isinstance(first, RowProblem) and "people.csv, line 2" in first.message
    assert "unquoted delimiter" in first.message
    assert isinstance(second, RowProblem) and "has 3 values but the header has 4" in second.message
    assert isinstance(third, Recipient) and third.fields["city"] == "Oslo"


def test_spaces_around_column_names_are_trimmed_with_a_warning(tmp_path: Path) -> None:
    data = "email , name,  First Name ,city\na@fabrikam.example,A,Anna,Oslo\n"
    path = write_campaign(tmp_path, data=data, html='{{ row["First Name"] }}={{ first_name }}', text="x")
    source = _source(path)
    assert source.warnings == [
        "people.csv: spaces around the column names 'email ', ' name', '  First Name ' were trimmed"
    ]
    assert render_rows(path)[2].html == "Anna=Anna"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("email,name,city,city", "'city' appears more than once"),
        ("email,name,First Name,first_name", "would share one template variable"),
    ],
)
def test_duplicate_column_names_are_rejected(tmp_path: Path, header: str, message: str) -> None:
    path = write_campaign(tmp_path, data=f"{header}\na@fabrikam.example,A,B,C\n")
    with pytest.raises(InputError, match=message):
        entries(path)


def test_settings_find_columns_whatever_their_case_and_missing_ones_are_named(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, data="Email,Name,first_name,city\na@fabrikam.example,A,A,X\n")
    assert entries(path)[0].email == "a@fabrikam.example"
    path = write_campaign(tmp_path, data="mail,name,first_name,city\na@fabrikam.example,A,A,X\n")
    with pytest.raises(InputError, match="no column named 'email'"):
        entries(path)


def test_a_column_without_header_is_ignored_with_a_warning(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, data="email,,name,first_name,city\na@fabrikam.example,junk,A,A,X\n")
    (entry,) = entries(path)
    assert "junk" not in entry.fields.values()
    assert any("column B has no header" in w for w in _source(path).warnings)


def test_leading_zeros_and_text_are_kept_as_written(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, data="email,name,first_name,city,zip\na@fabrikam.example,A,A,X,01234\n")
    assert entries(path)[0].fields["zip"] == "01234"


def test_memory_stays_flat_however_long_the_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak memory while reading 10,000 rows is about that of 1,000: only a chunk is held."""
    monkeypatch.setattr(recipients_module, "CHUNK_ROWS", 200)
    monkeypatch.setattr(tables, "SCAN_BYTES", 16 * 1024)  # the encoding scan reads blocks of this size

    def peak(rows: int) -> int:
        body = "".join(f"p{i}@fabrikam.example,Person {i},P{i},Oslo\n" for i in range(rows))
        path = write_campaign(tmp_path / str(rows), data="email,name,first_name,city\n" + body)
        source = RecipientSource(load_campaign(path))
        tracemalloc.start()
        count = sum(len(chunk) for chunk in source.chunks())
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == rows
        return top

    small, large = peak(1_000), peak(10_000)
    assert large < small * 1.5

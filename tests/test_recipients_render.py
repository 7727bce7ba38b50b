from __future__ import annotations

from mailmerge.campaign import load_campaign
from mailmerge.recipients import Recipient, RecipientSource, RowProblem, identifier
from mailmerge.render import Renderer


def _entries(path):
    return [entry for chunk in RecipientSource(load_campaign(path)).chunks() for entry in chunk]


def test_identifiers_for_columns() -> None:
    assert identifier(" First Name ") == "first_name"
    assert identifier("E-mail address") == "e_mail_address"
    assert identifier("2nd") == "col_2nd"


def test_rows_keep_spreadsheet_row_numbers_and_flag_bad_addresses(make_campaign) -> None:
    csv_text = "email,name,first_name,city\nok@fabrikam.example,A,A,X\nnot-an-address,B,B,Y\n,C,C,Z\n"
    entries = _entries(make_campaign(csv_text=csv_text))
    assert isinstance(entries[0], Recipient) and entries[0].row == 2
    assert isinstance(entries[1], RowProblem) and entries[1].row == 3 and entries[1].column == "email"
    assert "not a valid address" in str(entries[1])
    assert isinstance(entries[2], RowProblem) and "empty" in entries[2].message


def test_key_is_case_insensitive_address(make_campaign) -> None:
    csv_text = "email,name,first_name,city\nAnna@Fabrikam.example,A,A,X\n"
    (entry,) = _entries(make_campaign(csv_text=csv_text))
    assert entry.key == "anna@fabrikam.example"


def test_quoted_fields_and_non_ascii(make_campaign) -> None:
    csv_text = 'email,name,first_name,city\nz@fabrikam.example,"Dupont, Zoë","Zoë","Lyon ""centre"""\n'
    (entry,) = _entries(make_campaign(csv_text=csv_text))
    assert entry.name == "Dupont, Zoë"
    assert entry.fields["city"] == 'Lyon "centre"'


def test_render_autoescapes_html_but_not_text(make_campaign) -> None:
    csv_text = "email,name,first_name,city\nx@fabrikam.example,X,<script>alert(1)</script>,Oslo\n"
    path = make_campaign(csv_text=csv_text)
    (entry,) = _entries(path)
    rendered = Renderer(load_campaign(path)).render(entry)
    assert "&lt;script&gt;" in rendered.html and "<script>" not in rendered.html
    assert "<script>" in rendered.text


def test_missing_variable_names_row_and_template_line(make_campaign) -> None:
    path = make_campaign(html="<p>Hello</p>\n<p>{{ missing_column }}</p>")
    (entry, *_rest) = _entries(path)
    problem = Renderer(load_campaign(path)).render(entry)
    assert isinstance(problem, RowProblem)
    assert problem.row == 2
    assert "line 2" in str(problem) and "missing_column" in str(problem)


def test_subject_with_newline_is_refused(make_campaign) -> None:
    csv_text = 'email,name,first_name,city\nx@fabrikam.example,X,"A\nBcc: evil@x",Oslo\n'
    path = make_campaign(csv_text=csv_text)
    (entry,) = _entries(path)
    problem = Renderer(load_campaign(path)).render(entry)
    assert isinstance(problem, RowProblem) and "header injection" in problem.message


def test_sandbox_refuses_unsafe_attribute_access(make_campaign) -> None:
    path = make_campaign(text="{{ first_name.__class__.__mro__ }}")
    (entry, *_rest) = _entries(path)
    problem = Renderer(load_campaign(path)).render(entry)
    assert isinstance(problem, RowProblem)

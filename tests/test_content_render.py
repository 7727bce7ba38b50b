"""Rich templates: Markdown, inlined CSS, derived text, includes, filters, headers and injection."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailmerge.campaign import load_campaign
from mailmerge.errors import ConfigError
from mailmerge.recipients import RowProblem
from mailmerge.render import RenderedMessage
from mailmerge.send.graph import Address
from tests.content_support import HEADER_ROW, render_rows, write_campaign


def _one(tmp_path: Path, **options: object) -> RenderedMessage | RowProblem:
    rendered = render_rows(write_campaign(tmp_path, **options))  # type: ignore[arg-type]
    return rendered[2]


def test_markdown_body_becomes_html_and_recipient_data_stays_text(tmp_path: Path) -> None:
    data = HEADER_ROW + 'a@fabrikam.example,"[Pay here](https://evil.example) <b>x</b> *y*",Anna,Oslo\n'
    message = _one(
        tmp_path,
        data=data,
        html=None,
        text=None,
        message={"markdown": "body.md.j2"},
        files={
            "body.md.j2": "# Hello {{ first_name }}\n\nFrom **{{ name }}**, see [our site](https://contoso.example).\n"
        },
    )
    assert isinstance(message, RenderedMessage)
    assert "<h1>Hello Anna</h1>" in message.html
    assert '<a href="https://contoso.example">our site</a>' in message.html
    assert "evil.example" in message.html and 'href="https://evil.example"' not in message.html
    assert "&lt;b&gt;x&lt;/b&gt; *y*" in message.html
    # The text version is the Markdown as written, with the data as it is.
    assert message.text.startswith("# Hello Anna\n\nFrom **[Pay here](https://evil.example) <b>x</b> *y***")


def test_style_blocks_are_inlined_and_media_queries_kept(tmp_path: Path) -> None:
    html = (
        "<html><head><style>p.note { color: #c00; }"
        " @media (max-width: 600px) { p { font-size: 18px; } }</style>"
        '</head><body><p class="note">Hi {{ first_name }}</p></body></html>'
    )
    message = _one(tmp_path, html=html)
    assert '<p class="note" style="color: #c00;">Hi Anna</p>' in message.html
    assert "@media (max-width: 600px)" in message.html
    assert "p.note" not in message.html


def test_inlining_can_be_turned_off(tmp_path: Path) -> None:
    html = "<style>p { color: red; }</style><p>Hi</p>"
    assert _one(tmp_path, html=html, message={"inline_css": False}).html == html


def test_text_is_derived_from_html_when_no_text_template(tmp_path: Path) -> None:
    html = '<h1>Welcome, {{ first_name }}!</h1><p>Read the <a href="https://contoso.example/start">guide</a>.</p>'
    message = _one(tmp_path, html=html, text=None)
    assert message.text == "Welcome, Anna!\n\nRead the [guide](https://contoso.example/start).\n"


def test_includes_and_extends_from_the_templates_folder(tmp_path: Path) -> None:
    message = _one(
        tmp_path,
        html=None,
        text=None,
        message={"html": "templates/welcome.html.j2", "text": "templates/welcome.txt.j2"},
        files={
            "templates/base.html.j2": (
                "<html><body>{% block content %}{% endblock %}{% include 'footer.html.j2' %}</body></html>"
            ),
            "templates/footer.html.j2": "<p>— {{ city }} team</p>",
            "templates/welcome.html.j2": (
                "{% extends 'base.html.j2' %}{% block content %}<h1>Hi {{ first_name }}</h1>{% endblock %}"
            ),
            "templates/welcome.txt.j2": "Hi {{ first_name }}\n{% include 'footer.txt.j2' %}",
            "templates/footer.txt.j2": "-- {{ city }}",
        },
    )
    assert message.html == "<html><body><h1>Hi Anna</h1><p>— Oslo team</p></body></html>"
    assert message.text == "Hi Anna\n-- Oslo"


def test_an_include_cannot_climb_out_of_the_templates(tmp_path: Path) -> None:
    message = _one(tmp_path, html="{% include '../../etc/passwd' %}", files={"secret.txt": "s3cret"})
    assert isinstance(message, RowProblem)
    assert message.message == "html template: no template '../../etc/passwd' in the templates folder"


def test_date_currency_and_number_filters_follow_the_locale(tmp_path: Path) -> None:
    data = (
        "email,name,first_name,due,total,points,lang\na@fabrikam.example,A,A,2024-03-05,1234.5,12345,de_DE\n"
    )
    template = "|".join(
        [
            '{{ due | date("d MMMM y") }}',
            '{{ total | currency("EUR") }}',
            "{{ points | number }}",
            "{{ total | number(2) }}",
            '{{ due | date("long", locale=lang) }}',
        ]
    )
    english = _one(tmp_path / "en", data=data, html=template, text="x")
    assert english.html == "5 March 2024|€1,234.50|12,345|1,234.50|5. März 2024"
    dutch = _one(tmp_path / "nl", data=data, html=template, text="x", message={"locale": "nl-NL"})
    assert dutch.html == "5 maart 2024|€\u00a01.234,50|12.345|1.234,50|5. März 2024"


def test_a_date_in_another_format_needs_parse_and_says_so(tmp_path: Path) -> None:
    data = "email,name,first_name,due\na@fabrikam.example,A,A,05/03/2024\n"
    problem = _one(tmp_path, data=data, html='{{ due | date("long") }}', text="x")
    assert isinstance(problem, RowProblem) and "'05/03/2024' is not a date" in problem.message
    assert 'parse="%d/%m/%Y"' in problem.message
    fixed = _one(tmp_path, data=data, html='{{ due | date("long", parse="%d/%m/%Y") }}', text="x")
    assert fixed.html == "March 5, 2024"


def test_unknown_locale_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[message\] locale"):
        load_campaign(write_campaign(tmp_path, message={"locale": "xx_YY"}))


def test_cc_bcc_and_reply_to_are_templated_address_lists(tmp_path: Path) -> None:
    data = (
        "email,name,first_name,city,manager\n"
        "a@fabrikam.example,A,Anna,Oslo,Boss Man <boss@fabrikam.example>; deputy@fabrikam.example\n"
    )
    message = _one(
        tmp_path,
        data=data,
        message={
            "cc": "{{ manager }}",
            "bcc": ["archive@contoso.example", "{{ audit | default('') }}"],
            "reply_to": "Support <support@contoso.example>",
        },
    )
    assert message.cc == (Address("boss@fabrikam.example", "Boss Man"), Address("deputy@fabrikam.example"))
    assert message.bcc == (Address("archive@contoso.example"),)
    assert message.reply_to == (Address("support@contoso.example", "Support"),)


def test_a_bad_cc_address_refuses_the_row(tmp_path: Path) -> None:
    data = "email,name,first_name,city,manager\na@fabrikam.example,A,Anna,Oslo,boss at fabrikam\n"
    problem = _one(tmp_path, data=data, message={"cc": "{{ manager }}"})
    assert isinstance(problem, RowProblem) and problem.message.startswith("cc: ")


def test_custom_headers_are_rendered_and_empty_ones_left_out(tmp_path: Path) -> None:
    message = _one(
        tmp_path,
        message={
            "headers": {"X-Campaign": "spring-{{ city | lower }}", "X-Segment": "{{ segment | default('') }}"}
        },
    )
    assert message.headers == (("X-Campaign", "spring-oslo"),)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({f"X-H{i}": "v" for i in range(5)}, "at most 4 custom headers"),
        ({"Campaign": "v"}, "must start with X-"),
        ({"X-MailMerge-Id": "v"}, "mailmerge's own tag"),
        ({"X-A": "v", "x-a": "w"}, "given twice"),
        ({"X-Bad Name": "v"}, "must start with X-"),
    ],
)
def test_header_names_and_count_are_checked_when_the_campaign_loads(
    tmp_path: Path, headers: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_campaign(write_campaign(tmp_path, message={"headers": headers}))


INJECTIONS = 'a@fabrikam.example,A,"Anna\nBcc: victim@evil.example",Oslo,"x\r\nX-Evil: 1"\n'


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"subject": "Hi {{ first_name }}"}, "the subject would contain a line break"),
        (
            {"subject": "Hello", "cc": "{{ first_name }} <cc@fabrikam.example>"},
            "cc would contain a line break",
        ),
        ({"subject": "Hello", "reply_to": "{{ extra }}"}, "reply_to would contain a line break"),
        (
            {"subject": "Hello", "headers": {"X-Note": "{{ extra }}"}},
            "header X-Note would contain a line break",
        ),
    ],
    ids=["subject", "cc-name", "reply-to", "custom-header"],
)
def test_header_injection_is_refused_for_the_row(
    tmp_path: Path, message: dict[str, object], expected: str
) -> None:
    data = "email,name,first_name,city,extra\n" + INJECTIONS
    problem = _one(tmp_path, data=data, message=message)
    assert (
        isinstance(problem, RowProblem)
        and expected in problem.message
        and "header injection" in problem.message
    )


def test_html_injection_is_escaped_in_html_but_kept_in_text(tmp_path: Path) -> None:
    data = HEADER_ROW + 'a@fabrikam.example,A,"<img src=x onerror=alert(1)>",Oslo\n'
    message = _one(tmp_path, data=data)
    assert "&lt;img src=x onerror=alert(1)&gt;" in message.html and "<img" not in message.html
    assert "<img src=x onerror=alert(1)>" in message.text


def test_missing_variable_on_the_last_row_only_refuses_that_row(tmp_path: Path) -> None:
    data = (
        HEADER_ROW
        + "a@fabrikam.example,A,Anna,Oslo\nb@fabrikam.example,B,Bob,Bergen\nc@fabrikam.example,C,Cleo,\n"
    )
    rendered = render_rows(write_campaign(tmp_path, data=data, html="<p>Hi</p>\n<p>{{ city }}</p>"))
    assert isinstance(rendered[2], RenderedMessage) and isinstance(rendered[3], RenderedMessage)
    assert isinstance(rendered[4], RowProblem)
    assert str(rendered[4]) == "row 4: html template, line 2: 'city' is undefined"


def test_a_runtime_error_in_a_template_is_the_rows_problem_not_a_crash(tmp_path: Path) -> None:
    problem = _one(tmp_path, html="{{ 1 / (first_name | length - 4) }}")
    assert isinstance(problem, RowProblem) and "ZeroDivisionError" in problem.message


def test_markdown_and_html_together_are_refused(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, message={"markdown": "body.md.j2"}, files={"body.md.j2": "x"})
    with pytest.raises(ConfigError, match="html or markdown, not both"):
        load_campaign(path)


def test_an_unknown_locale_in_a_row_is_that_rows_problem(tmp_path: Path) -> None:
    data = "email,name,first_name,total,lang\na@fabrikam.example,A,A,12.5,zz_ZZ\n"
    problem = _one(tmp_path, data=data, html='{{ total | currency("EUR", locale=lang) }}', text="x")
    assert isinstance(problem, RowProblem) and "unknown locale 'zz_ZZ'" in problem.message

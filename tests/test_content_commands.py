"""The content commands as a user runs them: validate, run --dry-run / --skip-invalid, and preview."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailmerge.campaign import load_campaign
from mailmerge.cli import main
from mailmerge.errors import ExitCode, SendError
from mailmerge.preview import preview, send_test
from mailmerge.send.transport import Response
from tests.content_support import HEADER_ROW, write_campaign

MIXED = HEADER_ROW + (
    "anna@fabrikam.example,Anna Schmidt,Anna,Oslo\n"
    "jose@fabrikam.example,José García,José,Sevilla\n"
    "ANNA@fabrikam.example,Anna again,Anna,Oslo\n"
    "spy@competitor.example,Spy,Spy,Nowhere\n"
    "not-an-address,Nobody,Nobody,Nowhere\n"
    "cleo@fabrikam.example,Cleo,Cleo,\n"
)
CLEAN = (
    HEADER_ROW
    + "anna@fabrikam.example,Anna Schmidt,Anna,Oslo\njose@fabrikam.example,José García,José,Sevilla\n"
)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("MM_TEST_SECRET", raising=False)


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def _campaign(tmp_path: Path, data: str = MIXED, **options: object) -> Path:
    options.setdefault("recipients", {"suppress": ["*@competitor.example"]})
    options.setdefault("files", {"files/logo.png": b"\x89PNG logo", "files/terms.pdf": b"%PDF terms"})
    options.setdefault("message", {"attachments": ["files/logo.png", "files/terms.pdf"]})
    options.setdefault("html", '<img src="logo.png"><p>Hi {{ first_name }} from {{ city }}</p>')
    return write_campaign(tmp_path, data=data, **options)  # type: ignore[arg-type]


def test_validate_a_clean_list(tmp_path: Path) -> None:
    result = invoke("validate", _campaign(tmp_path, CLEAN))
    assert result.exit_code == ExitCode.OK
    assert "ready to send" in result.output and "│ ready to send               │     2 │" in result.output
    assert "read as UTF-8, ','-separated" in result.output


def test_validate_reports_every_kind_of_row_and_exits_3(tmp_path: Path) -> None:
    problems = tmp_path / "problems.csv"
    result = invoke("validate", _campaign(tmp_path), "--problems", problems)
    assert result.exit_code == ExitCode.INPUT
    assert "row 6, column 'email': 'not-an-address' is not a valid address" in result.output
    assert "row 7: html template, line 1: 'city' is undefined" in result.output
    assert "row 4: ANNA@fabrikam.example — the same key (anna@fabrikam.example) as row 2" in result.output
    with problems.open(encoding="utf-8") as rows:
        listed = [(int(r["row"]), r["status"]) for r in csv.DictReader(rows)]
    assert listed == [(4, "duplicate"), (5, "suppressed"), (6, "invalid"), (7, "invalid")]


def test_run_refuses_a_list_with_errors_before_signing_in_or_sending(tmp_path: Path) -> None:
    path = _campaign(tmp_path)
    result = invoke("run", path)
    assert result.exit_code == ExitCode.INPUT  # not AUTH: sign-in was never tried
    assert "2 of 6 rows cannot be sent; nothing was sent" in result.output
    assert "--skip-invalid" in result.output
    assert not path.with_suffix(".db").exists()


def test_dry_run_writes_deterministic_eml_files_and_a_manifest(tmp_path: Path) -> None:
    path = _campaign(tmp_path, CLEAN + "ANNA@fabrikam.example,Anna again,Anna,Oslo\n")
    first, second = tmp_path / "first", tmp_path / "second"
    assert invoke("run", path, "--dry-run", "--dry-run-dir", first).exit_code == ExitCode.OK
    assert invoke("run", path, "--dry-run", "--dry-run-dir", second).exit_code == ExitCode.OK
    names = sorted(p.name for p in first.iterdir())
    assert names == ["manifest.csv", "row-0000002.eml", "row-0000003.eml"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    with (first / "manifest.csv").open(encoding="utf-8") as manifest:
        rows = list(csv.DictReader(manifest))
    assert [(r["row"], r["status"], r["file"]) for r in rows] == [
        ("2", "pending", "row-0000002.eml"),
        ("3", "pending", "row-0000003.eml"),
        ("4", "duplicate", ""),
    ]
    assert rows[0]["sha256"] == hashlib.sha256((first / "row-0000002.eml").read_bytes()).hexdigest()
    eml = (first / "row-0000003.eml").read_bytes().decode("ascii")  # 7-bit clean, CRLF line ends
    assert "To: =?utf-8?q?Jos=C3=A9_Garc=C3=ADa?= <jose@fabrikam.example>\r\n" in eml
    assert "Date: Sat, 01 Jan 2000 00:00:00 +0000\r\n" in eml
    assert 'Content-Disposition: inline; filename="logo.png"\r\nContent-ID: <logo.png>' in eml
    assert 'Content-Disposition: attachment; filename="terms.pdf"' in eml
    assert not path.with_suffix(".db").exists()


def test_dry_run_with_skip_invalid_lists_invalid_rows_in_the_manifest(tmp_path: Path) -> None:
    path = _campaign(tmp_path)
    assert invoke("run", path, "--dry-run", "--dry-run-dir", tmp_path / "out").exit_code == ExitCode.INPUT
    assert not (tmp_path / "out").exists()
    result = invoke("run", path, "--dry-run", "--dry-run-dir", tmp_path / "out", "--skip-invalid")
    assert result.exit_code == ExitCode.OK
    assert "--skip-invalid: 2 rows are recorded as invalid" in result.output
    with (tmp_path / "out" / "manifest.csv").open(encoding="utf-8") as manifest:
        statuses = {r["row"]: r["status"] for r in csv.DictReader(manifest)}
    assert statuses == {
        "2": "pending",
        "3": "pending",
        "4": "duplicate",
        "5": "suppressed",
        "6": "invalid",
        "7": "invalid",
    }


def test_preview_shows_one_message_and_saves_html_and_eml(tmp_path: Path) -> None:
    path = _campaign(tmp_path)
    result = invoke("preview", path, "--row", "3", "--out", tmp_path / "pv")
    assert result.exit_code == ExitCode.OK
    assert "José García <jose@fabrikam.example>" in result.output
    assert "Hello José" in result.output and "Hi José from Sevilla" in result.output
    assert "logo.png (image/png, 9 bytes, inline as cid:logo.png)" in result.output
    html = (tmp_path / "pv" / "row-3.html").read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,' in html  # a browser shows the inline image
    assert (tmp_path / "pv" / "row-3.eml").read_bytes().startswith(b"Date: ")

    by_email = invoke("preview", path, "--email", "Jose@Fabrikam.example", "--out", tmp_path / "pv")
    assert by_email.exit_code == ExitCode.OK and "Hi José from Sevilla" in by_email.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--row", "7"], "row 7: html template, line 1: 'city' is undefined"),
        (["--row", "6"], "'not-an-address' is not a valid address"),
        (["--row", "99"], "no recipient on row 99"),
        (["--email", "nobody@fabrikam.example"], "no recipient with the address nobody@fabrikam.example"),
    ],
)
def test_preview_of_a_row_that_cannot_be_sent_says_why(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = invoke("preview", _campaign(tmp_path), *args, "--out", tmp_path / "pv")
    assert result.exit_code == ExitCode.INPUT and expected in result.output


class FakeTransport:
    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[str, str, dict[str, str], dict]] = []

    async def request(
        self, method: str, url: str, *, headers: dict[str, str], body: bytes | None = None, timeout: float
    ) -> Response:
        self.requests.append((method, url, headers, json.loads(body or b"{}")))
        status = self.statuses.pop(0)
        payload = (
            b""
            if status == 202
            else json.dumps({"error": {"code": "ErrorInvalidRecipients", "message": "no"}}).encode()
        )
        return Response(status, {}, payload)

    async def close(self) -> None:
        pass


class FakeTokens:
    def __init__(self, *, delegated: bool = False) -> None:
        self.delegated = delegated
        self.calls: list[bool] = []

    async def token(self, *, force_refresh: bool = False) -> str:
        self.calls.append(force_refresh)
        return f"token-{len(self.calls)}"


def test_send_test_goes_to_one_address_marked_as_a_test(tmp_path: Path) -> None:
    campaign = load_campaign(
        _campaign(
            tmp_path,
            CLEAN,
            message={
                "attachments": ["files/logo.png"],
                "cc": "boss@fabrikam.example",
                "bcc": "audit@fabrikam.example",
            },
        )
    )
    shown = preview(campaign, row=2)
    transport, tokens = FakeTransport(401, 202), FakeTokens()
    sent = asyncio.run(
        send_test(campaign, shown, "tester@contoso.example", transport=transport, tokens=tokens)
    )
    assert tokens.calls == [False, True]  # a refused token is refreshed once
    method, url, headers, body = transport.requests[-1]
    assert (method, url) == ("POST", "https://graph.microsoft.com/v1.0/users/news@contoso.example/sendMail")
    assert headers["Authorization"] == "Bearer token-2"
    message = body["message"]
    assert body["saveToSentItems"] is False
    assert message["subject"] == "[TEST] Hello Anna"
    assert message["toRecipients"] == [{"emailAddress": {"address": "tester@contoso.example"}}]
    assert (
        "ccRecipients" not in message and "bccRecipients" not in message
    )  # the real cc/bcc are not written to
    assert message["singleValueExtendedProperties"][0]["value"] == sent.tag and sent.tag.startswith("test-")
    assert (
        message["attachments"][0]["contentId"] == "logo.png" and message["attachments"][0]["isInline"] is True
    )


def test_send_test_with_a_delegated_sign_in_sends_as_the_user(tmp_path: Path) -> None:
    campaign = load_campaign(_campaign(tmp_path, CLEAN))
    transport = FakeTransport(202)
    tokens = FakeTokens(delegated=True)
    asyncio.run(
        send_test(campaign, preview(campaign), "tester@contoso.example", transport=transport, tokens=tokens)
    )
    assert transport.requests[0][1] == "https://graph.microsoft.com/v1.0/me/sendMail"


def test_send_test_reports_a_refusal(tmp_path: Path) -> None:
    campaign = load_campaign(_campaign(tmp_path, CLEAN))
    shown = preview(campaign)
    with pytest.raises(SendError, match="400 ErrorInvalidRecipients"):
        asyncio.run(
            send_test(
                campaign, shown, "tester@contoso.example", transport=FakeTransport(400), tokens=FakeTokens()
            )
        )


# -- the awkward-input corpus: each gives its own answer, none a traceback or a sent message --------------


CORPUS = {
    "empty-file": ("", ExitCode.INPUT, "people.csv is empty"),
    "header-only": (HEADER_ROW, ExitCode.OK, "│ ready to send               │     0 │"),
    "semicolon-cp1252": (
        "email;name;first_name;city\r\na@fabrikam.example;Zoë;Zoë;Köln\r\n".encode("cp1252"),
        ExitCode.OK,
        "Windows-1252, ';'-separated",
    ),
    "unclosed-quote": (
        HEADER_ROW + 'a@fabrikam.example,"A,A,X\n',
        ExitCode.INPUT,
        "people.csv, line 2: a quoted value",
    ),
    "ragged": (
        HEADER_ROW + "a@fabrikam.example,A,A,X,Y\n",
        ExitCode.INPUT,
        "people.csv, line 2: the row has 5 values",
    ),
    "duplicate-columns": (
        "email,name,name\na@fabrikam.example,A,B\n",
        ExitCode.INPUT,
        "'name' appears more than once",
    ),
    "bad-address": (HEADER_ROW + "a@@fabrikam.example,A,A,X\n", ExitCode.INPUT, "is not a valid address"),
    "subject-injection": (
        HEADER_ROW + 'a@fabrikam.example,A,"A\r\nBcc: x@evil.example",X\n',
        ExitCode.INPUT,
        "header injection refused",
    ),
    "missing-last": (
        HEADER_ROW + "a@fabrikam.example,A,A,X\nb@fabrikam.example,B,B,\n",
        ExitCode.INPUT,
        "row 3: html template",
    ),
    "binary": (b"\x00\x01\x02PK\x03\x04" * 100, ExitCode.INPUT, "people.csv"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_awkward_inputs_give_a_clear_answer(tmp_path: Path, case: str) -> None:
    data, code, expected = CORPUS[case]
    path = write_campaign(tmp_path, data=data)  # type: ignore[arg-type]
    result = invoke("validate", path)
    assert result.exit_code == code, result.output
    assert expected in result.output
    if code != ExitCode.OK:  # run stops at the same place, before anything is recorded or sent
        assert invoke("run", path).exit_code == code
        assert not path.with_suffix(".db").exists()


# -- through the emulator, when it is there ---------------------------------------------------------


def _delivered(path: Path) -> list[dict]:
    outbox = path.with_name(f"{path.stem}.sandbox")
    return [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(outbox.rglob("*.json"))
        if p.parent != outbox
    ]


def test_run_with_skip_invalid_sends_the_valid_rows_and_records_the_rest(tmp_path: Path) -> None:
    path = _campaign(tmp_path)
    result = invoke("run", path, "--sandbox", "--skip-invalid")
    assert result.exit_code == ExitCode.OK, result.output
    sent = sorted(m["recipients"][0] for m in _delivered(path))
    assert sent == ["anna@fabrikam.example", "jose@fabrikam.example"]
    with sqlite3.connect(path.with_suffix(".db")) as db:
        statuses = dict(db.execute("select row, status from recipients").fetchall())
    assert statuses == {2: "sent", 3: "sent", 4: "duplicate", 5: "suppressed", 6: "invalid", 7: "invalid"}

    # The user fixes both rows and runs again: they are sent once, and each row has one record.
    data = path.parent / "people.csv"
    text = data.read_text(encoding="utf-8")
    text = text.replace("not-an-address,Nobody", "nobody@fabrikam.example,Nobody").replace(
        "cleo@fabrikam.example,Cleo,Cleo,\n", "cleo@fabrikam.example,Cleo,Cleo,Bergen\n"
    )
    data.write_text(text, encoding="utf-8")
    again = invoke("run", path, "--sandbox")
    assert again.exit_code == ExitCode.OK, again.output
    sent = sorted(m["recipients"][0] for m in _delivered(path))
    assert sent == [
        "anna@fabrikam.example",
        "cleo@fabrikam.example",
        "jose@fabrikam.example",
        "nobody@fabrikam.example",
    ]
    with sqlite3.connect(path.with_suffix(".db")) as db:
        statuses = dict(db.execute("select row, status from recipients").fetchall())
        records = db.execute("select count(*) from recipients").fetchone()[0]
    assert statuses == {2: "sent", 3: "sent", 4: "duplicate", 5: "suppressed", 6: "sent", 7: "sent"}
    assert records == 6


def test_preview_send_test_through_the_emulator_is_not_recorded(tmp_path: Path) -> None:
    path = _campaign(tmp_path, CLEAN)
    result = invoke(
        "preview",
        path,
        "--row",
        "2",
        "--send-test-to",
        "tester@contoso.example",
        "--sandbox",
        "--out",
        tmp_path / "pv",
    )
    assert result.exit_code == ExitCode.OK, result.output
    (message,) = _delivered(path)
    assert message["recipients"] == ["tester@contoso.example"]
    assert message["subject"] == "[TEST] Hello Anna"
    assert not path.with_suffix(".db").exists()

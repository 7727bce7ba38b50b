"""Per-recipient attachments: templated paths kept inside the campaign folder, inline images, sizes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailmerge.campaign import load_campaign
from mailmerge.errors import ConfigError
from mailmerge.recipients import RowProblem
from mailmerge.render import RenderedMessage
from mailmerge.runner import preflight
from mailmerge.send.graph import Attachment
from tests.content_support import HEADER_ROW, render_rows, write_campaign

INVOICES = "email,name,first_name,city,invoice_no\n"
PDF = b"%PDF-1.4 brochure"


def _rendered(
    tmp_path: Path, attachments: list[str], **options: object
) -> dict[int, RenderedMessage | RowProblem]:
    options.setdefault("data", INVOICES + "a@fabrikam.example,A,Anna,Oslo,2024-001\n")
    files = {
        "files/brochure.pdf": PDF,
        "invoices/2024-001.pdf": b"invoice 1",
        "invoices/2024-002.pdf": b"invoice 2",
    }
    files.update(options.pop("files", {}))  # type: ignore[arg-type]
    message = {"attachments": attachments, **options.pop("message", {})}  # type: ignore[dict-item]
    return render_rows(write_campaign(tmp_path, files=files, message=message, **options))  # type: ignore[arg-type]


def test_static_and_templated_attachments(tmp_path: Path) -> None:
    data = INVOICES + "a@fabrikam.example,A,Anna,Oslo,2024-001\nb@fabrikam.example,B,Bob,Bergen,2024-002\n"
    rendered = _rendered(tmp_path, ["files/brochure.pdf", "invoices/{{ invoice_no }}.pdf"], data=data)
    assert rendered[2].attachments == (
        Attachment("brochure.pdf", "application/pdf", PDF),
        Attachment("2024-001.pdf", "application/pdf", b"invoice 1"),
    )
    assert rendered[3].attachments[1] == Attachment("2024-002.pdf", "application/pdf", b"invoice 2")


def test_globs_attach_every_match_in_order_and_must_match_something(tmp_path: Path) -> None:
    rendered = _rendered(tmp_path, ["invoices/*.pdf"])
    assert [a.name for a in rendered[2].attachments] == ["2024-001.pdf", "2024-002.pdf"]
    problem = _rendered(tmp_path / "none", ["files/*.docx"])[2]
    assert isinstance(problem, RowProblem) and "no file matches 'files/*.docx'" in problem.message


def test_a_glob_character_in_recipient_data_matches_only_itself(tmp_path: Path) -> None:
    data = INVOICES + "a@fabrikam.example,A,Anna,Oslo,*\n"
    problem = _rendered(tmp_path, ["invoices/{{ invoice_no }}.pdf"], data=data)[2]
    assert isinstance(problem, RowProblem) and "not found" in problem.message
    problem = _rendered(tmp_path / "g", ["invoices/{{ invoice_no }}*.pdf"], data=data)[2]
    assert isinstance(problem, RowProblem) and "no file matches" in problem.message


def test_a_missing_attachment_names_the_file(tmp_path: Path) -> None:
    data = INVOICES + "a@fabrikam.example,A,Anna,Oslo,2024-999\n"
    problem = _rendered(tmp_path, ["invoices/{{ invoice_no }}.pdf"], data=data)[2]
    assert isinstance(problem, RowProblem)
    assert problem.message.startswith(
        "attachment 'invoices/{{ invoice_no }}.pdf': 'invoices/2024-999.pdf' not found"
    )


@pytest.mark.parametrize(
    ("attachment", "invoice_no", "expected"),
    [
        ("../outside.txt", "x", "leads outside the campaign folder"),
        ("invoices/{{ invoice_no }}.pdf", "../../outside", "leads outside the campaign folder"),
        ("invoices/{{ invoice_no }}", "../../../../../../etc/hostname", "leads outside the campaign folder"),
        ("{{ invoice_no }}", "/etc/hostname", "is an absolute path"),
        ("~/notes.txt", "x", "is an absolute path"),
    ],
    ids=["template-dotdot", "data-dotdot", "data-deep-dotdot", "data-absolute", "home"],
)
def test_path_traversal_is_refused(tmp_path: Path, attachment: str, invoice_no: str, expected: str) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    data = INVOICES + f"a@fabrikam.example,A,Anna,Oslo,{invoice_no}\n"
    problem = _rendered(tmp_path / "campaign", [attachment], data=data)[2]
    assert isinstance(problem, RowProblem) and expected in problem.message


def test_a_symbolic_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    folder = tmp_path / "campaign"
    (folder / "files").mkdir(parents=True)
    os.symlink(tmp_path / "outside.txt", folder / "files" / "link.txt")
    problem = _rendered(folder, ["files/link.txt"])[2]
    assert isinstance(problem, RowProblem) and "leads outside the campaign folder" in problem.message


def test_allow_outside_permits_absolute_and_outside_paths(tmp_path: Path) -> None:
    outside = tmp_path / "shared" / "terms.txt"
    outside.parent.mkdir()
    outside.write_text("terms")
    rendered = _rendered(
        tmp_path / "campaign", [str(outside), "../shared/terms.txt"], message={"allow_outside": True}
    )[2]
    assert [(a.name, a.content_type, a.content) for a in rendered.attachments] == [
        ("terms.txt", "text/plain", b"terms"),
        ("terms.txt", "text/plain", b"terms"),
    ]


def test_an_image_named_in_the_html_becomes_inline(tmp_path: Path) -> None:
    html = (
        '<p><img src="logo.png" alt="Contoso"> <img src="files/chart.png">'
        ' <img src="https://contoso.example/banner.png"></p>'
    )
    rendered = _rendered(
        tmp_path,
        ["files/logo.png", "files/chart.png", "files/brochure.pdf"],
        html=html,
        files={"files/logo.png": b"\x89PNG logo", "files/chart.png": b"\x89PNG chart"},
    )[2]
    assert '<img src="cid:logo.png" alt="Contoso">' in rendered.html
    assert '<img src="cid:chart.png">' in rendered.html
    assert '<img src="https://contoso.example/banner.png">' in rendered.html
    assert [(a.name, a.content_type, a.content_id) for a in rendered.attachments] == [
        ("logo.png", "image/png", "logo.png"),
        ("chart.png", "image/png", "chart.png"),
        ("brochure.pdf", "application/pdf", None),
    ]


def test_a_relative_image_that_is_not_attached_is_a_problem(tmp_path: Path) -> None:
    problem = _rendered(tmp_path, [], html='<img src="logo.png">')[2]
    assert isinstance(problem, RowProblem)
    assert '<img src="logo.png"> names no attached file' in problem.message


def test_messages_over_the_size_limit_are_caught_in_preflight(tmp_path: Path) -> None:
    data = HEADER_ROW + "a@fabrikam.example,A,Anna,Oslo\n"
    path = write_campaign(
        tmp_path,
        data=data,
        message={"attachments": ["files/big.bin"]},
        limits={"max_message_mb": 0.05},
        files={"files/big.bin": b"\0" * 60_000},
    )
    result = preflight(load_campaign(path))
    assert not result.ok
    assert "over the limit of 0.05 MB ([limits] max_message_mb)" in result.problems[0].message


def test_attachments_of_3_mb_are_flagged_for_upload_sessions_and_over_150_mb_refused(tmp_path: Path) -> None:
    files_dir = tmp_path / "files"
    files_dir.mkdir()
    (files_dir / "video.mp4").write_bytes(b"\0" * (3 * 1024 * 1024))
    with (files_dir / "huge.iso").open("wb") as huge:
        huge.truncate(151 * 1024 * 1024)  # sparse: takes no disk
    data = (
        "email,name,first_name,city,file\n"
        "a@fabrikam.example,A,A,X,video.mp4\n"
        "b@fabrikam.example,B,B,Y,huge.iso\n"
    )
    path = write_campaign(tmp_path, data=data, message={"attachments": ["files/{{ file }}"]})
    result = preflight(load_campaign(path))
    assert (result.ready, result.upload_session, result.problem_count) == (1, 1, 1)
    assert "Graph takes attachments of at most 150 MB" in result.problems[0].message


def test_an_attachment_template_with_a_syntax_error_is_a_config_error(tmp_path: Path) -> None:
    path = write_campaign(tmp_path, message={"attachments": ["invoices/{{ invoice_no }.pdf"]})
    with pytest.raises(ConfigError, match=r"\[message\] attachments"):
        preflight(load_campaign(path))


def test_a_message_over_4_mb_in_all_is_counted_for_the_draft_path(tmp_path: Path) -> None:
    """Two 2 MB files: neither needs an upload session, but together they exceed one 4 MB request."""
    data = HEADER_ROW + "a@fabrikam.example,A,Anna,Oslo\nb@fabrikam.example,B,Bob,Bergen\n"
    path = write_campaign(
        tmp_path,
        data=data,
        message={"attachments": ["files/part-*.bin"]},
        files={"files/part-1.bin": b"\0" * 2_000_000, "files/part-2.bin": b"\0" * 2_000_000},
    )
    result = preflight(load_campaign(path))
    assert (result.ready, result.upload_session) == (2, 2)
    assert 5.1 < result.largest_message / 2**20 < 5.4  # 4,000,000 bytes travel as about 5.2 MB in base64

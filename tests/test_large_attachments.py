"""Attachments of 3 MB and more go through a draft and an upload session, transparently."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from mailmerge.campaign import load_campaign
from mailmerge.sandbox import Limits, Profile, Sandbox
from mailmerge.store import Status
from tests.conftest import point_at
from tests.test_exactly_once import CLIENT_ID, SECRET, TENANT, send_through


def test_large_and_small_attachments_arrive_whole(make_campaign, tmp_path: Path) -> None:
    big = os.urandom(5 * 1024 * 1024 + 12345)
    small = b"%PDF-1.4 small brochure\n" * 100
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "catalogue.bin").write_bytes(big)
    (tmp_path / "files" / "brochure.pdf").write_bytes(small)
    rows = [
        {"email": f"p{i}@fabrikam.example", "name": f"P {i}", "first_name": f"P{i}", "city": "Oslo"}
        for i in range(3)
    ]
    path = make_campaign(rows, limits="messages_per_minute = 'unlimited'")
    text = path.read_text().replace(
        'text = "body.txt.j2"',
        'text = "body.txt.j2"\nattachments = ["files/catalogue.bin", "files/brochure.pdf"]',
    )
    path.write_text(text)
    with Sandbox(
        Profile(limits=Limits(messages_per_minute=None, recipients_per_24h=None)), outbox=tmp_path / "outbox"
    ) as sandbox:
        sandbox.register_app(tenant=TENANT, client_id=CLIENT_ID, secret=SECRET)
        sandbox.add_mailbox("news@contoso.example")
        point_at(path, sandbox)
        assert send_through(sandbox, load_campaign(path))[Status.SENT] == 3
        delivered = sandbox.delivered()
        assert sorted(m.recipients[0] for m in delivered) == [r["email"] for r in rows]
        for message in delivered:
            assert message.via == "draft-send"
            files = {a["name"]: base64.b64decode(a["contentBytes"]) for a in message.message["attachments"]}
            assert files == {"catalogue.bin": big, "brochure.pdf": small}
        uploads = [e for e in sandbox.request_log() if e["method"] == "PUT"]
        assert len(uploads) == 3 * 2  # 5 MB in chunks of at most 4 MB, per message

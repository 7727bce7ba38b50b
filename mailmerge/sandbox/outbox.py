"""The outbox folder: what the sandbox delivered, as files a person can read, surviving restarts.

Layout:
    outbox/<mailbox>/<000001>-<short id>.json   one accepted message (a DeliveredMessage), pretty JSON
    outbox/<mailbox>/drafts/<item id>.json      a draft not sent yet (so a restart does not lose it)
    outbox/requests.log                         one JSON line per request answered
    outbox/sandbox-ca.pem                       the CA clients trust (kept so restarts keep trust)

Each message file is written before the client gets its 202, so an accepted message is on disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import IO, Any

from .mailstore import DeliveredMessage, StoredItem

REQUEST_LOG = "requests.log"
_MESSAGE_FILE = re.compile(r"^\d{6,}-[0-9a-f]+\.json$")


def _safe(name: str) -> str:
    """A folder name for a mailbox address that no address can turn into a path escape."""
    cleaned = re.sub(r"[^A-Za-z0-9@._+-]", "_", name.lower())
    return cleaned.lstrip(".") or "_"


def _draft_file_name(item_id: str) -> str:
    return hashlib.sha256(item_id.encode()).hexdigest()[:32] + ".json"


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._log: IO[str] | None = None

    def open(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._log = (self.root / REQUEST_LOG).open("a", encoding="utf-8", buffering=1)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self, entry: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.write(json.dumps(entry, separators=(",", ":")) + "\n")

    # -- delivered messages ----------------------------------------------------------------------
    def write_delivered(self, record: DeliveredMessage) -> Path:
        folder = self.root / _safe(record.mailbox)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{record.sequence:06d}-{record.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record.to_json(), indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
        return path

    def load_delivered(self) -> list[DeliveredMessage]:
        records = []
        for path in self.root.glob("*/*.json"):
            if _MESSAGE_FILE.match(path.name):
                data = json.loads(path.read_text(encoding="utf-8"))
                records.append(DeliveredMessage(**data))
        records.sort(key=lambda r: r.sequence)
        return records

    # -- drafts ----------------------------------------------------------------------------------
    def write_draft(self, item: StoredItem) -> None:
        folder = self.root / _safe(item.mailbox) / "drafts"
        folder.mkdir(parents=True, exist_ok=True)
        data = {
            "id": item.id,
            "mailbox": item.mailbox,
            "message": item.message,
            "created_at": item.created_at,
            "internet_message_id": item.internet_message_id,
            "immutable": item.immutable,
            "uploads": [
                {**u, "content": base64.b64encode(u["content"]).decode("ascii")} for u in item.uploads
            ],
        }
        (folder / _draft_file_name(item.id)).write_text(json.dumps(data, indent=2), encoding="utf-8")

    def delete_draft(self, item: StoredItem) -> None:
        (self.root / _safe(item.mailbox) / "drafts" / _draft_file_name(item.id)).unlink(missing_ok=True)

    def load_drafts(self) -> list[StoredItem]:
        items = []
        for path in self.root.glob("*/drafts/*.json"):
            data = json.loads(path.read_text(encoding="utf-8"))
            uploads = [{**u, "content": base64.b64decode(u["content"])} for u in data["uploads"]]
            items.append(
                StoredItem(
                    id=data["id"],
                    mailbox=data["mailbox"],
                    folder="drafts",
                    message=data["message"],
                    created_at=data["created_at"],
                    visible_at=data["created_at"],
                    internet_message_id=data["internet_message_id"],
                    is_draft=True,
                    immutable=data["immutable"],
                    uploads=uploads,
                )
            )
        return items

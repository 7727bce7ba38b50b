"""Attachments: templated paths resolved inside the campaign's folder, sized, typed and read.

A path like ``invoices/{{ invoice_no }}.pdf`` is rendered per recipient, so recipient data decides
which file is read. Three rules keep that safe: a path is taken relative to the campaign file and
must stay inside that folder tree after every ``..`` and symbolic link is resolved (unless the
campaign says ``allow_outside = true``); an absolute path needs the same permission; and recipient
values are glob-escaped, so only the template itself can use ``*``.

An ``<img src="logo.png">`` in the HTML that names an attached file becomes ``cid:`` and the file an
inline attachment. A relative image that names no attachment is a problem: it would show as a broken
image in every mail client.
"""

from __future__ import annotations

import glob
import html as html_lib
import math
import mimetypes
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from mailmerge.recipients import header_breaker

#: Graph's upload sessions take attachments of at most 150 MB.
MAX_ATTACHMENT_BYTES = 150 * 1024 * 1024
CACHE_BYTES = 64 * 1024 * 1024
CACHE_FILE_BYTES = 8 * 1024 * 1024
_MAGIC = re.compile(r"[*?\[]")
_JINJA_BLOCK = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_IMG_SRC = re.compile(
    r"""(<img\b[^>]*?\bsrc\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE | re.DOTALL
)
_URL_SCHEME = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")
_CID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Python's built-in table only, not the machine's /etc/mime.types: the same answer everywhere.
_TYPES = mimetypes.MimeTypes()


@dataclass(frozen=True, slots=True)
class FileRef:
    """One file to attach: where it is, what the recipient sees, and how big it is."""

    path: Path
    written: str
    name: str
    size: int
    content_type: str
    content_id: str | None = None

    @property
    def wire_size(self) -> int:
        """Its size inside a MIME message: base64 with line breaks every 76 characters."""
        encoded = 4 * math.ceil(self.size / 3)
        return encoded + 2 * math.ceil(encoded / 76)


def is_pattern(template: str) -> bool:
    """True when the template itself (not a value put into it) uses glob characters."""
    return bool(_MAGIC.search(_JINJA_BLOCK.sub("", template)))


def content_type(name: str) -> str:
    return _TYPES.guess_type(name, strict=False)[0] or "application/octet-stream"


class AttachmentFiles:
    """Resolves rendered attachment paths and reads files, remembering small shared ones."""

    def __init__(self, folder: Path, *, allow_outside: bool) -> None:
        self.root = folder.resolve()
        self.allow_outside = allow_outside
        self._cache: OrderedDict[tuple[Path, int, int], bytes] = OrderedDict()
        self._cached_bytes = 0

    def resolve(self, rendered: str, *, pattern: bool) -> list[FileRef]:
        """The files one rendered path names; :class:`ValueError` says why it cannot be used."""
        if not rendered.strip():
            raise ValueError("the attachment path renders empty")
        candidate = Path(rendered).expanduser()
        if candidate.is_absolute() and not self.allow_outside:
            raise ValueError(
                f"{rendered!r} is an absolute path; attachments must be inside the campaign folder "
                "(or set allow_outside = true under [message])"
            )
        if pattern:
            base = None if candidate.is_absolute() else self.root
            matches = sorted(glob.glob(str(candidate), root_dir=base, recursive=True))
            files = [self.root / m if base else Path(m) for m in matches]
            files = [f for f in files if f.is_file()]
            if not files:
                raise ValueError(f"no file matches {rendered!r}")
        else:
            files = [candidate if candidate.is_absolute() else self.root / candidate]
        return [self._ref(f, rendered) for f in files]

    def _ref(self, path: Path, written: str) -> FileRef:
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            raise ValueError(f"{written!r} cannot be resolved: {exc}") from exc
        if not self.allow_outside and not resolved.is_relative_to(self.root):
            raise ValueError(
                f"{written!r} leads outside the campaign folder ({self.root}); refused "
                "(set allow_outside = true under [message] if that is intended)"
            )
        try:
            stat = resolved.stat()
        except FileNotFoundError:
            raise ValueError(f"{written!r} not found (looked for {resolved})") from None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{written!r} cannot be read: {exc}") from exc
        if not resolved.is_file():
            raise ValueError(f"{written!r} is not a file")
        name = path.name
        if header_breaker(name):
            raise ValueError(f"the file name {name!r} contains a line break (header injection refused)")
        if stat.st_size > MAX_ATTACHMENT_BYTES:
            raise ValueError(
                f"{written!r} is {stat.st_size / 2**20:.1f} MB; Graph takes attachments of at most "
                f"{MAX_ATTACHMENT_BYTES // 2**20} MB"
            )
        return FileRef(
            path=resolved, written=written, name=name, size=stat.st_size, content_type=content_type(name)
        )

    def read(self, ref: FileRef) -> bytes:
        """The file's bytes; a shared file (a brochure, a logo) is read once for many recipients."""
        try:
            stat = ref.path.stat()
            key = (ref.path, stat.st_mtime_ns, stat.st_size)
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            content = ref.path.read_bytes()
        except OSError as exc:
            raise ValueError(f"{ref.written!r} cannot be read: {exc}") from exc
        if len(content) <= CACHE_FILE_BYTES:
            self._cache[key] = content
            self._cached_bytes += len(content)
            while self._cached_bytes > CACHE_BYTES:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= len(dropped)
        return content


def link_inline_images(html: str, files: list[FileRef]) -> tuple[str, list[FileRef]]:
    """Point ``<img src>`` that names an attached file at ``cid:`` and make that file inline.

    :class:`ValueError` for a relative image that names no attachment (a broken image otherwise).
    """
    by_written = {_normal(f.written): i for i, f in enumerate(files)}
    by_name: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        by_name.setdefault(f.name, []).append(i)
    files = list(files)
    used_ids: set[str] = set()

    def link(match: re.Match[str]) -> str:
        raw = next(g for g in match.groups()[1:] if g is not None)
        src = html_lib.unescape(raw).strip()
        if not src or _URL_SCHEME.match(src):
            return match.group(0)
        index = by_written.get(_normal(src))
        if index is None:
            candidates = by_name.get(Path(src).name, [])
            if len(candidates) != 1:
                raise ValueError(
                    f'<img src="{src}"> names no attached file; attach it under [message] attachments '
                    "or use a full https:// address"
                )
            index = candidates[0]
        ref = files[index]
        if ref.content_id is None:
            cid = _unique_cid(ref.name, used_ids)
            files[index] = ref = replace(ref, content_id=cid)
        return f'{match.group(1)}"cid:{ref.content_id}"'

    return _IMG_SRC.sub(link, html), files


def _normal(path: str) -> str:
    return path.replace("\\", "/").removeprefix("./")


def _unique_cid(name: str, used: set[str]) -> str:
    base = _CID_UNSAFE.sub("-", name).strip("-") or "image"
    cid, number = base, 1
    while cid in used:
        number += 1
        cid = f"{number}-{base}"
    used.add(cid)
    return cid

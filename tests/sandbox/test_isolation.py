"""The emulator must not share code with the client: a bug in both would pass every test unseen."""

from __future__ import annotations

import ast
from pathlib import Path

import mailmerge.sandbox

PACKAGE = Path(mailmerge.sandbox.__file__).parent


def test_sandbox_imports_nothing_else_from_mailmerge() -> None:
    offenders = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level > 1 or (
                    node.level == 0
                    and (node.module or "").startswith("mailmerge")
                    and not (node.module or "").startswith("mailmerge.sandbox")
                ):
                    offenders.append(f"{path.name}: from {'.' * node.level}{node.module}")
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path.name}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("mailmerge") and not a.name.startswith("mailmerge.sandbox")
                ]
    assert offenders == []

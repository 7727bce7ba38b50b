"""`mailmerge sandbox serve`: prints what a client needs, logs requests, stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
from click.testing import CliRunner

from mailmerge.sandbox.cli import sandbox

SCRIPT = "from mailmerge.sandbox.cli import sandbox; sandbox()"


def test_help_documents_every_command() -> None:
    runner = CliRunner()
    assert "serve" in runner.invoke(sandbox, ["--help"]).output
    result = runner.invoke(sandbox, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--port", "--outbox", "--profile", "--tenant", "--client-id", "--mailbox"):
        assert option in result.output


def test_serve_prints_credentials_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SCRIPT,
            "serve",
            "--outbox",
            str(tmp_path),
            "--tenant",
            "t.onmicrosoft.com",
            "--client-id",
            "cli-app",
            "--mailbox",
            "a@t.example",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        banner = ""
        deadline = time.monotonic() + 20
        while "Ctrl-C" not in banner and time.monotonic() < deadline:
            line = process.stderr.readline()  # type: ignore[union-attr]
            if not line:
                break
            banner += line
        graph = re.search(r"(https://127\.0\.0\.1:\d+/v1\.0)", banner)
        secret = re.search(r"Client secret\s*│?\s*(\S+)", banner)
        assert graph and secret, banner
        authority = graph.group(1)[: -len("/v1.0")]
        with requests.Session() as http:
            http.trust_env, http.verify = False, str(tmp_path / "sandbox-ca.pem")
            form = {
                "client_id": "cli-app",
                "client_secret": secret.group(1),
                "grant_type": "client_credentials",
                "scope": "https://graph.microsoft.com/.default",
            }
            token = http.post(f"{authority}/t.onmicrosoft.com/oauth2/v2.0/token", data=form).json()[
                "access_token"
            ]
            sent = http.post(
                f"{graph.group(1)}/users/a@t.example/sendMail",
                json={"message": {"toRecipients": [{"emailAddress": {"address": "x@y.example"}}]}},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert sent.status_code == 202
    finally:
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "1 messages delivered" in err
    log = [json.loads(line) for line in (tmp_path / "requests.log").read_text().splitlines()]
    assert [entry["status"] for entry in log] == [200, 202]

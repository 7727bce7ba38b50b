"""What the sign-in tests share: campaigns aimed at the emulator, certificates, a browser that needs no
user, and an HTTP session that records what the token endpoint issued."""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from html import unescape
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote_plus

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

TENANT = "contoso.onmicrosoft.com"
MAILBOX = "me@contoso.example"


def write_campaign(
    folder: Path,
    sandbox: Any,
    *,
    mode: str = "client_credentials",
    client_id: str = "app-1",
    auth: str = "",
    sender: str = f'mailbox = "{MAILBOX}"',
    rows: int = 5,
    name: str = "auth",
) -> Path:
    """A small campaign whose authority and Graph are the emulator's."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["email,name,first_name"] + [f"p{i}@fabrikam.example,P {i},P{i}" for i in range(1, rows + 1)]
    (folder / "people.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "body.txt.j2").write_text("Hi {{ first_name }}", encoding="utf-8")
    path = folder / f"{name}.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [campaign]
            name = "{name}"

            [sender]
            {sender}

            [recipients]
            source = "people.csv"
            name = "name"

            [message]
            subject = "Hello {{{{ first_name }}}}"
            text = "body.txt.j2"

            [auth]
            mode = "{mode}"
            tenant = "{TENANT}"
            client_id = "{client_id}"
            authority = "{sandbox.authority_host}"
            ca_file = "{sandbox.ca_file}"
            {{auth}}

            [graph]
            base_url = "{sandbox.graph_base_url}"
            ca_file = "{sandbox.ca_file}"

            [limits]
            messages_per_minute = 100000
            batch_size = 2
            """
        ).replace("{auth}", auth),
        encoding="utf-8",
    )
    return path


def make_certificate(
    folder: Path, *, passphrase: str | None = None, with_cert: bool = True, days: int = 30
) -> tuple[Path, bytes, str]:
    """A self-signed certificate and its key in one PEM file (0600); returns (file, cert PEM, SHA-1)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailmerge test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    path = folder / "app.pem"
    path.write_bytes(key_pem + (cert_pem if with_cert else b""))
    path.chmod(0o600)
    return path, cert_pem, cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303


def browser_for(sandbox: Any) -> Any:
    """A browser with nobody at it: load the sign-in page, deliver its answer to the redirect URI."""

    def open_page(url: str) -> bool:
        with requests.Session() as browser:
            browser.trust_env = False
            browser.verify = str(sandbox.ca_file)
            page = browser.get(url, allow_redirects=False, timeout=10)
            if "Location" in page.headers:
                browser.get(page.headers["Location"], timeout=10)
                return True
            action = re.search(r'action="([^"]+)"', page.text)
            assert action, page.text
            fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
            browser.post(
                unescape(action.group(1)), data={k: unescape(v) for k, v in fields.items()}, timeout=10
            )
        return True

    return open_page


class RecordingSession(requests.Session):
    """msal's HTTP session that keeps every credential it sent or received, for the secret scan."""

    issued: ClassVar[list[str]] = []  # what the token endpoint issued, and the credentials sent
    grants: ClassVar[list[str]] = []  # the grant type of every token request

    def __init__(self) -> None:
        super().__init__()
        self.hooks["response"].append(self._record)

    def _record(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        body = response.request.body
        if body:
            text = body.decode() if isinstance(body, bytes) else str(body)
            RecordingSession.grants += [
                unquote_plus(g) for g in re.findall(r"(?:^|&)grant_type=([^&]+)", text)
            ]
            for key in ("client_assertion", "client_secret", "refresh_token", "device_code", "code"):
                found = re.findall(rf"(?:^|&){key}=([^&]+)", text)
                RecordingSession.issued += [unquote_plus(value) for value in found]
        if "/oauth2/v2.0/token" in response.url and response.ok:
            answer = response.json()
            RecordingSession.issued += [answer[k] for k in ("access_token", "refresh_token") if k in answer]


def recording_session(ca_file: Any) -> RecordingSession:
    """A stand-in for :func:`mailmerge.auth.http_session` that records credentials."""
    session = RecordingSession()
    if ca_file:
        session.trust_env = False
        session.verify = str(ca_file)
    return session

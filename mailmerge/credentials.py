"""The app-only credentials: a client secret (from an environment variable or an owner-only file) or a
certificate (a PEM file with the private key, its passphrase from an environment variable).

Every check that needs no network happens here, before msal sees anything, so a mistake is a
configuration error (exit 2) naming the key to fix. Secrets are returned to the caller and never
put into a message: errors name the variable or file, never the value.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mailmerge.campaign import Campaign
from mailmerge.errors import ConfigError


def _owner_only(path: Path, what: str, key: str) -> None:
    """Refuse a secret that other users can read."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"the {what} {path} can be read by other users (mode {mode:04o})",
            context=f"[auth] {key}",
            hint=f"chmod 600 {path}",
        )


def client_secret(campaign: Campaign) -> str:
    """The client secret, from the owner-only file or the environment variable the campaign names."""
    auth = campaign.settings.auth
    if auth.client_secret_file:
        path = campaign.resolve(auth.client_secret_file)
        if path.exists():
            _owner_only(path, "client secret file", "client_secret_file")
        secret = _read(path, "client secret file", "client_secret_file", encoding="utf-8").strip()
        if not secret:
            raise ConfigError(f"the client secret file {path} is empty", context="[auth] client_secret_file")
        return secret
    variable = auth.client_secret_env
    if not variable:
        raise ConfigError(
            "no client credential configured",
            context="[auth]",
            hint='name the environment variable that holds the secret (client_secret_env = "..."), a '
            'file (client_secret_file = "..."), or a certificate (certificate = "app.pem")',
        )
    secret = os.environ.get(variable)
    if not secret:
        raise ConfigError(
            f"the environment variable {variable} is not set",
            context="[auth] client_secret_env",
            hint=f"export {variable}=<the app's client secret> (never write it into the campaign file)",
        )
    return secret


@dataclass(frozen=True)
class Certificate:
    """A certificate credential as msal takes it; ``repr`` never shows the key."""

    path: Path
    sha1_thumbprint: str
    not_valid_after: datetime | None
    credential: dict[str, str] = field(repr=False)


_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


def load_certificate(campaign: Campaign) -> Certificate:
    """The private key (and certificate) of ``[auth] certificate``, checked before msal sees them."""
    auth = campaign.settings.auth
    assert auth.certificate is not None
    path = campaign.resolve(auth.certificate)
    text = _read(path, "certificate file", "certificate", encoding="ascii")
    blocks = {m.group(1): m.group(0) for m in _PEM_BLOCK.finditer(text)}
    key_pem = next((pem for name, pem in blocks.items() if name.endswith("PRIVATE KEY")), None)
    if key_pem is None:
        raise ConfigError(
            f"{path} holds no private key",
            context="[auth] certificate",
            hint="give a PEM file with the private key and the certificate (cat key.pem cert.pem > app.pem)",
        )
    passphrase = None
    if auth.certificate_passphrase_env:
        passphrase = os.environ.get(auth.certificate_passphrase_env)
        if not passphrase:
            raise ConfigError(
                f"the environment variable {auth.certificate_passphrase_env} is not set",
                context="[auth] certificate_passphrase_env",
                hint=f"export {auth.certificate_passphrase_env}=<the private key's passphrase>",
            )
    if "ENCRYPTED" not in key_pem:
        _owner_only(path, "certificate file (an unencrypted private key)", "certificate")
    try:
        serialization.load_pem_private_key(key_pem.encode(), passphrase.encode() if passphrase else None)
    except (ValueError, TypeError) as exc:
        wrong = "the passphrase is wrong" if passphrase else "the key is encrypted"
        raise ConfigError(
            f"cannot load the private key in {path}: {wrong or exc}",
            context="[auth] certificate",
            hint="name the variable holding the passphrase with certificate_passphrase_env"
            if not passphrase
            else "check the passphrase",
        ) from exc
    credential = {"private_key": key_pem}
    if passphrase:
        credential["passphrase"] = passphrase
    given = re.sub(r"[^0-9a-f]", "", (auth.thumbprint or "").lower())
    cert_pem = blocks.get("CERTIFICATE")
    if cert_pem is None:
        if len(given) != 40:
            raise ConfigError(
                f"{path} holds no certificate, and no SHA-1 thumbprint is given",
                context="[auth] thumbprint",
                hint="append the certificate to the file, or copy its thumbprint from Certificates & secrets",
            )
        return Certificate(path, given.upper(), None, credential | {"thumbprint": given})
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    sha1 = cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - the thumbprint Entra ID shows
    if given and given not in (sha1, cert.fingerprint(hashes.SHA256()).hex()):
        raise ConfigError(
            f"the thumbprint {auth.thumbprint} is not the certificate's in {path} ({sha1.upper()})",
            context="[auth] thumbprint",
            hint="remove thumbprint (it is computed from the certificate) or fix it",
        )
    expires = cert.not_valid_after_utc
    if expires < datetime.now(UTC):
        raise ConfigError(
            f"the certificate in {path} expired on {expires:%Y-%m-%d}",
            context="[auth] certificate",
            hint="create a new certificate and upload it under Certificates & secrets",
        )
    # With the certificate itself msal signs with PS256 and sends its SHA-256 thumbprint and chain.
    return Certificate(path, sha1.upper(), expires, credential | {"public_certificate": cert_pem})


def credential_description(campaign: Campaign) -> str:
    """How the campaign signs in, in words (never the secret itself)."""
    auth = campaign.settings.auth
    if auth.mode == "device_code":
        return "delegated: device-code sign-in, then the refresh token"
    if auth.mode == "auth_code":
        return "delegated: browser sign-in on http://localhost, then the refresh token"
    if auth.certificate:
        return f"app-only: certificate {campaign.resolve(auth.certificate)}"
    if auth.client_secret_file:
        return f"app-only: client secret in {campaign.resolve(auth.client_secret_file)}"
    return f"app-only: client secret in ${auth.client_secret_env}"


def _read(path: Path, what: str, key: str, *, encoding: str) -> str:
    """A credential file's text, or a :class:`ConfigError` naming the file and the key."""
    try:
        return path.read_text(encoding=encoding)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"the {what} {path} does not exist",
            context=f"[auth] {key}",
            hint="the path is relative to the campaign file",
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the {what} {path} ({exc.__class__.__name__})",
            context=f"[auth] {key}",
            hint=f"make the file readable by this user ({encoding} text)",
        ) from exc

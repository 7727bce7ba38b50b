"""TLS for the sandbox: a throwaway CA and a server certificate for 127.0.0.1 and localhost.

msal refuses http:// authorities, so the emulator speaks HTTPS. Clients trust the CA through the PEM
file written by `write_ca`. With an outbox folder the CA is kept there, so a restarted emulator
presents a certificate that clients configured before the restart still trust.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

CA_CERT_NAME = "sandbox-ca.pem"
CA_KEY_NAME = "sandbox-ca.key"


def load_or_create_ca(folder: Path | None) -> trustme.CA:
    """The CA kept in `folder` (created there on first use), or a fresh in-memory one."""
    if folder is not None:
        cert, key = folder / CA_CERT_NAME, folder / CA_KEY_NAME
        if cert.exists() and key.exists():
            return trustme.CA.from_pem(cert.read_bytes(), key.read_bytes())
    ca = trustme.CA(organization_name="mailmerge sandbox")
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        key_path = folder / CA_KEY_NAME
        key_path.write_bytes(ca.private_key_pem.bytes())
        key_path.chmod(0o600)
        (folder / CA_CERT_NAME).write_bytes(ca.cert_pem.bytes())
    return ca


def write_ca(ca: trustme.CA, path: Path) -> Path:
    """Write the CA certificate (never its key) where clients can point `verify=` at it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(ca.cert_pem.bytes())
    return path


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    """A server context with a fresh leaf certificate for the loopback names."""
    leaf = ca.issue_cert("127.0.0.1", "localhost", "::1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx

"""Fixtures for the sandbox's tests: started sandboxes and HTTP sessions that trust its CA."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from sandbox_support import CLIENT_ID, SECRET, SENDER, TENANT, Api

from mailmerge.sandbox import Profile, Sandbox


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    """Start sandboxes with the standard app and sender registered; all are stopped at the end."""
    started: list[Sandbox] = []

    def make(profile: Profile | None = None, register: bool = True, **kwargs: Any) -> Sandbox:
        sb = Sandbox(profile or Profile(), **kwargs)
        if register:
            sb.register_app(TENANT, CLIENT_ID, secret=SECRET)
            sb.add_mailbox(SENDER)
        sb.start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()


@pytest.fixture
def sb(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def make_api() -> Iterator[Callable[[Sandbox], Api]]:
    apis: list[Api] = []

    def make(sandbox: Sandbox) -> Api:
        api = Api(sandbox)
        apis.append(api)
        return api

    yield make
    for api in apis:
        api.close()


@pytest.fixture
def api(sb: Sandbox, make_api: Callable[[Sandbox], Api]) -> Api:
    return make_api(sb)


@pytest.fixture
def msal_http(sb: Sandbox) -> Iterator[requests.Session]:
    """The http_client msal needs here: trusts the sandbox CA and ignores REQUESTS_CA_BUNDLE."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(sb.ca_file)
    yield session
    session.close()


@pytest.fixture(scope="session")
def certificate() -> dict[str, Any]:
    """A self-signed certificate and key, as an app registration would hold."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailmerge test app")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return {
        "key_pem": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "cert_pem": cert.public_bytes(serialization.Encoding.PEM),
        "sha1": cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - msal's legacy thumbprint
    }

"""The emulated directory: tenants, app registrations, mailboxes (users) and the tokens issued to them.

This module holds state and rules, no HTTP: `authority.py` speaks the OAuth wire protocol on top of
it and `graph.py` asks it whether a bearer token is good. Access tokens are JWTs signed with a key
that lives only in this process, so tokens from an earlier emulator process are simply unknown
(401 InvalidAuthenticationToken), as they would be after a key rollover.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes

GRAPH_RESOURCE = "https://graph.microsoft.com"
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
_NAMESPACE = uuid.UUID("7f2c1a52-5d0e-4a44-9a37-0c1f4b5e6d21")


def stable_id(kind: str, name: str) -> str:
    """A GUID derived from a name, so a restarted emulator gives users and tenants the same ids."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{name.lower()}"))


class DirectoryError(Exception):
    """An Entra ID error: `error` (OAuth code), AADSTS number and description, HTTP status."""

    def __init__(self, status: int, error: str, aadsts: int, description: str, suberror: str | None = None):
        super().__init__(f"AADSTS{aadsts}: {description}")
        self.status = status
        self.error = error
        self.aadsts = aadsts
        self.description = f"AADSTS{aadsts}: {description}"
        self.suberror = suberror


@dataclass(frozen=True)
class Tenant:
    name: str
    id: str


@dataclass
class App:
    """An app registration with its credentials and the permissions an admin granted."""

    client_id: str
    tenant: Tenant
    secret: str | None
    certificate: x509.Certificate | None
    application_permissions: frozenset[str]
    delegated_permissions: frozenset[str]
    admin_consent: bool
    public_client: bool
    redirect_uris: tuple[str, ...]
    service_principal_id: str = ""

    @property
    def sha1_thumbprint(self) -> bytes | None:
        return self.certificate.fingerprint(_SHA1) if self.certificate else None

    @property
    def sha256_thumbprint(self) -> bytes | None:
        return self.certificate.fingerprint(_SHA256) if self.certificate else None


@dataclass
class Mailbox:
    """A user with an Exchange Online mailbox; `address` is its UPN and primary SMTP address."""

    address: str
    id: str
    display_name: str
    can_send: bool = True
    rest_enabled: bool = True
    send_as_denied: bool = False


@dataclass(slots=True)
class AccessToken:
    """What the emulator remembers about an access token it issued."""

    app: App
    user: Mailbox | None
    permissions: frozenset[str]  # lower-cased roles (app-only) or scopes (delegated)
    expires_at: float

    @property
    def delegated(self) -> bool:
        return self.user is not None

    def has_any(self, *permissions: str) -> bool:
        return any(p.lower() in self.permissions for p in permissions)


@dataclass
class UserGrant:
    """A user's consent to an app for some scopes: behind refresh tokens, device codes and auth codes."""

    app: App
    user: Mailbox
    scopes: tuple[str, ...]  # as the client asked for them, resource-qualified or not
    permissions: frozenset[str]  # lower-cased permission names
    nonce: str | None = None


@dataclass
class DeviceCode:
    app: App
    scopes: tuple[str, ...]
    permissions: frozenset[str]
    user_code: str
    expires_at: float
    user: Mailbox | None = None


@dataclass
class AuthCode:
    grant: UserGrant
    redirect_uri: str
    code_challenge: str | None
    code_challenge_method: str
    expires_at: float


@dataclass
class Directory:
    """Tenants, apps, mailboxes and outstanding grants. Mutated from the server loop and, for setup
    calls, from the test's thread: every mutation is a single dict assignment."""

    signing_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    tenants: dict[str, Tenant] = field(default_factory=dict)  # by lower-cased name and by id
    apps: dict[str, App] = field(default_factory=dict)
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)  # by lower-cased address and by id
    tokens: dict[str, AccessToken] = field(default_factory=dict)
    refresh_tokens: dict[str, UserGrant] = field(default_factory=dict)
    device_codes: dict[str, DeviceCode] = field(default_factory=dict)
    auth_codes: dict[str, AuthCode] = field(default_factory=dict)

    # -- setup -----------------------------------------------------------------------------------
    def tenant(self, name_or_id: str) -> Tenant | None:
        return self.tenants.get(name_or_id.lower())

    def ensure_tenant(self, name: str) -> Tenant:
        existing = self.tenant(name)
        if existing:
            return existing
        tenant = Tenant(name=name, id=stable_id("tenant", name))
        self.tenants[name.lower()] = tenant
        self.tenants[tenant.id] = tenant
        return tenant

    def register_app(
        self,
        tenant: str,
        client_id: str,
        secret: str | None,
        certificate_pem: bytes | None,
        application_permissions: tuple[str, ...],
        delegated_permissions: tuple[str, ...],
        admin_consent: bool,
        public_client: bool,
        redirect_uris: tuple[str, ...] = (),
    ) -> App:
        cert = x509.load_pem_x509_certificate(certificate_pem) if certificate_pem else None
        app = App(
            client_id=client_id,
            tenant=self.ensure_tenant(tenant),
            secret=secret,
            certificate=cert,
            application_permissions=frozenset(application_permissions),
            delegated_permissions=frozenset(delegated_permissions),
            admin_consent=admin_consent,
            public_client=public_client,
            redirect_uris=tuple(redirect_uris),
            service_principal_id=stable_id("sp", client_id),
        )
        self.apps[client_id.lower()] = app
        return app

    def add_mailbox(
        self, address: str, can_send: bool, rest_enabled: bool, send_as_denied: bool, display_name: str | None
    ) -> Mailbox:
        mailbox = Mailbox(
            address=address,
            id=stable_id("user", address),
            display_name=display_name or address.split("@")[0],
            can_send=can_send,
            rest_enabled=rest_enabled,
            send_as_denied=send_as_denied,
        )
        self.mailboxes[address.lower()] = mailbox
        self.mailboxes[mailbox.id] = mailbox
        return mailbox

    def mailbox(self, key: str) -> Mailbox | None:
        return self.mailboxes.get(key) or self.mailboxes.get(key.lower())

    def app(self, client_id: str) -> App | None:
        return self.apps.get(client_id.lower())

    # -- scopes ----------------------------------------------------------------------------------
    def app_only_scope(self, scope: str) -> None:
        """Client credentials take exactly `{resource}/.default` (AADSTS1002012 otherwise)."""
        parts = scope.split()
        if len(parts) != 1 or parts[0].rstrip("/").lower() not in (f"{GRAPH_RESOURCE}/.default", ".default"):
            raise DirectoryError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have a "
                "scope value with /.default suffixed to the resource identifier (application ID URI).",
            )

    def delegated_permissions(self, app: App, scope: str) -> tuple[tuple[str, ...], frozenset[str]]:
        """The scopes to echo back and the permissions to grant, or consent_required."""
        echoed: list[str] = []
        granted: set[str] = set()
        for item in scope.split():
            if item.lower() in OIDC_SCOPES:
                continue
            name = item[len(GRAPH_RESOURCE) + 1 :] if item.lower().startswith(GRAPH_RESOURCE + "/") else item
            if name.lower() == ".default":
                granted |= {p.lower() for p in app.delegated_permissions}
                echoed += [f"{GRAPH_RESOURCE}/{p}" for p in sorted(app.delegated_permissions)]
                continue
            if name.lower() not in {p.lower() for p in app.delegated_permissions} or not app.admin_consent:
                raise self._consent_required(app, name)
            granted.add(name.lower())
            echoed.append(item)
        if not app.admin_consent:
            raise self._consent_required(app, "the requested permissions")
        return tuple(echoed), frozenset(granted)

    @staticmethod
    def _consent_required(app: App, what: str) -> DirectoryError:
        return DirectoryError(
            400,
            "invalid_grant",
            65001,
            f"The user or administrator has not consented to use the application with ID '{app.client_id}' "
            f"for {what}. Send an interactive authorization request for this user and resource.",
            suberror="consent_required",
        )

    # -- tokens ----------------------------------------------------------------------------------
    def issue_access_token(
        self, app: App, user: Mailbox | None, permissions: frozenset[str], now: float, lifetime: int
    ) -> str:
        claims: dict[str, Any] = {
            "aud": GRAPH_RESOURCE,
            "iss": f"https://sts.windows.net/{app.tenant.id}/",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime),
            "appid": app.client_id,
            "tid": app.tenant.id,
            "uti": secrets.token_urlsafe(16),
            "ver": "1.0",
        }
        if user is None:
            claims["oid"] = app.service_principal_id
            claims["roles"] = sorted(app.application_permissions)
        else:
            claims["oid"] = user.id
            claims["upn"] = user.address
            claims["scp"] = " ".join(sorted(permissions))
        token = jwt.encode(claims, self.signing_key, algorithm="HS256")
        lowered = frozenset(p.lower() for p in (app.application_permissions if user is None else permissions))
        self.tokens[token] = AccessToken(app=app, user=user, permissions=lowered, expires_at=now + lifetime)
        return token

    def new_refresh_token(self, grant: UserGrant) -> str:
        token = "0.A" + secrets.token_urlsafe(48)
        self.refresh_tokens[token] = grant
        return token

    def new_device_code(
        self, app: App, scopes: tuple[str, ...], permissions: frozenset[str], expires_at: float
    ) -> tuple[str, DeviceCode]:
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
        user_code = "".join(secrets.choice(alphabet) for _ in range(9))
        code = DeviceCode(app, scopes, permissions, user_code, expires_at)
        device_code = "DAQABAAEAAAD" + secrets.token_urlsafe(64)
        self.device_codes[device_code] = code
        return device_code, code

    def approve_device_code(self, user_code: str, address: str) -> None:
        user = self.mailbox(address)
        if user is None:
            raise KeyError(f"no mailbox {address!r}: add_mailbox() it first")
        for code in self.device_codes.values():
            if code.user_code == user_code.replace("-", "").upper():
                code.user = user
                return
        raise KeyError(f"no pending device code with user code {user_code!r}")

    def new_auth_code(self, code: AuthCode) -> str:
        value = "0.A" + secrets.token_urlsafe(64)
        self.auth_codes[value] = code
        return value


_SHA1 = hashes.SHA1()  # noqa: S303 - the x5t header is a SHA-1 thumbprint by RFC 7515
_SHA256 = hashes.SHA256()


def pkce_s256(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()

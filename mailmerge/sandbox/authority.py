"""Entra ID's v2.0 endpoints, as msal uses them: discovery, token, device code, authorize.

The wire format follows Microsoft's documentation and what msal (1.39) sends and expects: form
bodies, JSON answers, `AADSTSnnnnn` errors with `error_codes`, `client_info` and an `id_token` in user
flows. Client assertions are verified for real (signature, thumbprint, audience, lifetime) with PyJWT.
"""

from __future__ import annotations

import base64
import hmac
import html
import json
import secrets
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import jwt

from .directory import OIDC_SCOPES, App, AuthCode, DirectoryError, Mailbox, UserGrant, pkce_s256
from .wire import HttpRequest, Reply, new_request_id

if TYPE_CHECKING:
    from .profile import Profile
    from .state import SandboxState

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
AUTH_CODE_LIFETIME = 600.0
# Entra ID accepts client assertions up to five minutes outside their validity window (clock skew).
ASSERTION_LEEWAY = 300


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authority:
    """Answers `/{tenant}/...` requests. `host` is the server's https origin."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.directory = state.directory
        self.clock = state.clock

    @property
    def profile(self) -> Profile:
        return self.state.profile

    @property
    def host(self) -> str:
        return self.state.host

    # -- dispatch --------------------------------------------------------------------------------
    async def handle(self, req: HttpRequest) -> Reply:
        parts = req.path.strip("/").split("/")
        try:
            if req.method == "GET" and parts[-1:] == ["devicelogin"] and len(parts) == 1:
                return Reply(
                    200,
                    "Device codes are approved with Sandbox.approve_device_code(user_code, upn).",
                    content_type="text/plain; charset=utf-8",
                )
            if len(parts) < 2:
                return self._not_found()
            tenant_key, rest = parts[0], "/".join(parts[1:])
            if req.method == "GET" and rest == "v2.0/.well-known/openid-configuration":
                return self._discovery(tenant_key, req)
            if req.method == "POST" and rest == "oauth2/v2.0/token":
                return await self._token(tenant_key, req)
            if req.method == "POST" and rest == "oauth2/v2.0/devicecode":
                return self._devicecode(tenant_key, req)
            if req.method == "GET" and rest == "oauth2/v2.0/authorize":
                return self._authorize(tenant_key, req)
            return self._not_found()
        except DirectoryError as exc:
            return self._error(exc, req)

    def _not_found(self) -> Reply:
        return Reply(
            404, {"error": "not_found", "error_description": "No such Entra ID endpoint in the sandbox."}
        )

    def _error(self, exc: DirectoryError, req: HttpRequest, headers: dict[str, str] | None = None) -> Reply:
        now = self.clock.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(now))
        trace_id = new_request_id()
        correlation_id = req.client_request_id or new_request_id()
        body: dict[str, Any] = {
            "error": exc.error,
            "error_description": f"{exc.description}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}",
            "error_codes": [exc.aadsts],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.host}/error?code={exc.aadsts}",
        }
        if exc.suberror:
            body["suberror"] = exc.suberror
        return Reply(exc.status, body, dict(headers or {}), note={"error": f"AADSTS{exc.aadsts}"})

    def _tenant(self, key: str, error: str = "invalid_request") -> Any:
        tenant = self.directory.tenant(key)
        if tenant is None:
            raise DirectoryError(
                400,
                error,
                90002,
                f"Tenant '{key}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud. Check with your subscription administrator, this may happen "
                "if there are no active subscriptions for the tenant.",
            )
        return tenant

    # -- discovery -------------------------------------------------------------------------------
    def _discovery(self, tenant_key: str, req: HttpRequest) -> Reply:
        tenant = self._tenant(tenant_key, error="invalid_tenant")
        base = f"{self.host}/{tenant.id}"
        return Reply(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "msgraph_host": "graph.microsoft.com",
            },
        )

    # -- token endpoint --------------------------------------------------------------------------
    async def _token(self, tenant_key: str, req: HttpRequest) -> Reply:
        form = _form(req.body)
        note = {"grant": form.get("grant_type"), "client_id": form.get("client_id")}
        plan = self.state.plan
        fault = plan.decide("token")
        if fault is not None:
            status = 429 if fault.variant < 0.5 else 503
            seconds = plan.faults.retry_after_seconds
            exc = DirectoryError(
                status, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again."
            )
            reply = self._error(exc, req, {"Retry-After": str(max(1, round(seconds)))})
            reply.fault, reply.note = "token_error", note
            return reply
        tenant = self._tenant(tenant_key)
        client_id = form.get("client_id") or _basic_user(req)
        if not client_id:
            raise DirectoryError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            )
        app = self.directory.app(client_id)
        if app is None or app.tenant.id != tenant.id:
            raise DirectoryError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant.name}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You may have sent "
                "your authentication request to the wrong tenant.",
            )
        grant_type = form.get("grant_type", "")
        authenticated = self._authenticate_client(app, form, req, tenant.id)
        if not authenticated and (grant_type == "client_credentials" or not app.public_client):
            raise DirectoryError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        if grant_type == "client_credentials":
            reply = self._client_credentials(app, form)
        elif grant_type == DEVICE_GRANT:
            reply = self._device_grant(app, form)
        elif grant_type == "authorization_code":
            reply = self._auth_code_grant(app, form)
        elif grant_type == "refresh_token":
            reply = self._refresh_grant(app, form)
        else:
            raise DirectoryError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'.",
            )
        reply.note = note
        return reply

    def _authenticate_client(self, app: App, form: dict[str, str], req: HttpRequest, tenant_id: str) -> bool:
        secret = form.get("client_secret") or _basic_password(req)
        if secret is not None:
            if app.secret is None or not hmac.compare_digest(secret.encode(), app.secret.encode()):
                raise DirectoryError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request is the "
                    "client secret value, not the client secret ID, for a secret added to app "
                    f"'{app.client_id}'.",
                )
            return True
        assertion = form.get("client_assertion")
        if assertion is not None:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise DirectoryError(
                    400,
                    "invalid_request",
                    90014,
                    "The request body must contain the following parameter: "
                    f"'client_assertion_type' = '{ASSERTION_TYPE}'.",
                )
            self._verify_assertion(app, assertion, tenant_id)
            return True
        return False

    def _verify_assertion(self, app: App, assertion: str, tenant_id: str) -> None:
        def bad(reason: str, code: int = 700027) -> DirectoryError:
            return DirectoryError(
                401,
                "invalid_client",
                code,
                f"Client assertion contains an invalid signature. [Reason - {reason}]",
            )

        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as exc:
            raise bad(f"The client assertion is not a well-formed JWT: {exc}.") from exc
        presented = [
            (header.get("x5t"), app.sha1_thumbprint),
            (header.get("x5t#S256"), app.sha256_thumbprint),
        ]
        matched = False
        for value, expected in presented:
            if value and expected is not None:
                try:
                    matched = matched or _b64url_decode(value) == expected
                except ValueError:
                    continue
        if app.certificate is None or not matched:
            used = next((v for v, _ in presented if v), None)
            thumb = _b64url_decode(used).hex().upper() if used else "none"
            raise bad(
                f"The key was not found., Thumbprint of key used by client: '{thumb}'. Please visit the "
                f"Azure Portal to verify that the certificate is registered for app '{app.client_id}'."
            )
        tenant = app.tenant
        audiences = [f"{self.host}/{key}/oauth2/v2.0/token" for key in (tenant.id, tenant.name)]
        audiences += [f"{self.host}/{tenant.id}/v2.0", f"{self.host}/{tenant.name}/v2.0"]
        try:
            # Lifetime is checked against real time: msal mints assertions from the client's own clock,
            # whatever clock drives the emulator.
            claims = jwt.decode(
                assertion,
                app.certificate.public_key(),
                algorithms=["RS256", "PS256"],
                audience=audiences,
                options={"require": ["exp", "aud", "iss", "sub"]},
                leeway=ASSERTION_LEEWAY,
            )
        except jwt.ExpiredSignatureError as exc:
            raise DirectoryError(
                401, "invalid_client", 700024, "Client assertion is not within its valid time range."
            ) from exc
        except jwt.InvalidAudienceError as exc:
            raise bad(f"The audience claim must be this tenant's token endpoint, {audiences[0]}.") from exc
        except jwt.PyJWTError as exc:
            raise bad(f"The signature could not be verified: {exc}.") from exc
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise bad("The iss and sub claims must both be the client id.", 700023)

    def _client_credentials(self, app: App, form: dict[str, str]) -> Reply:
        self.directory.app_only_scope(form.get("scope", ""))
        if not app.admin_consent:
            raise DirectoryError(
                400,
                "invalid_grant",
                65001,
                "The user or administrator has not consented to use the application with ID "
                f"'{app.client_id}'. An administrator must grant consent for the application permissions.",
                suberror="consent_required",
            )
        lifetime = self.profile.token_lifetime_seconds
        token = self.directory.issue_access_token(app, None, frozenset(), self.clock.time(), lifetime)
        return Reply(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
                "scope": "https://graph.microsoft.com/.default",
            },
        )

    def _user_tokens(self, grant: UserGrant, form: dict[str, str], requested: str) -> Reply:
        app, user = grant.app, grant.user
        now = self.clock.time()
        lifetime = self.profile.token_lifetime_seconds
        asked = set(requested.split())
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join([*grant.scopes, *sorted((asked & OIDC_SCOPES) - {"offline_access"})]),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.directory.issue_access_token(app, user, grant.permissions, now, lifetime),
        }
        if "offline_access" in asked:
            body["refresh_token"] = self.directory.new_refresh_token(grant)
        if "openid" in asked:
            body["id_token"] = self._id_token(app, user, now, lifetime, grant.nonce)
        if form.get("client_info") == "1":
            info = json.dumps({"uid": user.id, "utid": app.tenant.id}, separators=(",", ":"))
            body["client_info"] = b64url(info.encode())
        return Reply(200, body)

    def _id_token(self, app: App, user: Mailbox, now: float, lifetime: int, nonce: str | None) -> str:
        """An unsigned id_token: msal reads but does not verify it."""
        claims: dict[str, Any] = {
            "aud": app.client_id,
            "iss": f"{self.host}/{app.tenant.id}/v2.0",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + lifetime),
            "name": user.display_name,
            "oid": user.id,
            "preferred_username": user.address,
            "sub": b64url(hmac.digest(app.client_id.encode(), user.id.encode(), "sha256")[:24]),
            "tid": app.tenant.id,
            "ver": "2.0",
        }
        if nonce is not None:
            claims["nonce"] = nonce
        header = b64url(b'{"typ":"JWT","alg":"none"}')
        return f"{header}.{b64url(json.dumps(claims).encode())}."

    def _device_grant(self, app: App, form: dict[str, str]) -> Reply:
        code = self.directory.device_codes.get(form.get("device_code", ""))
        if code is None or code.app is not app:
            raise DirectoryError(400, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
        if self.clock.time() > code.expires_at:
            self.directory.device_codes.pop(form["device_code"], None)
            raise DirectoryError(
                400,
                "expired_token",
                70020,
                "The provided value for the input parameter 'device_code' is not valid. "
                "This device code has expired.",
            )
        if code.user is None:
            raise DirectoryError(
                400,
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            )
        del self.directory.device_codes[form["device_code"]]
        scope = " ".join(code.scopes)
        echoed, permissions = self.directory.delegated_permissions(app, scope)
        return self._user_tokens(UserGrant(app, code.user, echoed, permissions), form, scope)

    def _auth_code_grant(self, app: App, form: dict[str, str]) -> Reply:
        value = form.get("code", "")
        code = self.directory.auth_codes.pop(value, None)
        if code is None or code.grant.app is not app:
            raise DirectoryError(
                400,
                "invalid_grant",
                54005 if value else 900144,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid "
                "code or use an existing refresh token."
                if value
                else "The request body must contain the following parameter: 'code'.",
            )
        if self.clock.time() > code.expires_at:
            raise DirectoryError(
                400,
                "invalid_grant",
                70008,
                "The provided authorization code or refresh token has expired due to "
                "inactivity. Send a new interactive authorization request for this user.",
            )
        if form.get("redirect_uri") != code.redirect_uri:
            raise DirectoryError(
                400,
                "invalid_grant",
                50011,
                f"The redirect URI '{form.get('redirect_uri')}' specified in the request does "
                "not match the redirect URI used to obtain the authorization code.",
            )
        if code.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            expected = pkce_s256(verifier) if code.code_challenge_method == "S256" else verifier
            if not verifier or not hmac.compare_digest(expected, code.code_challenge):
                raise DirectoryError(
                    400,
                    "invalid_grant",
                    50148,
                    "The code_verifier does not match the code_challenge supplied in the "
                    "authorization request for PKCE.",
                )
        return self._user_tokens(code.grant, form, form.get("scope", "openid profile offline_access"))

    def _refresh_grant(self, app: App, form: dict[str, str]) -> Reply:
        grant = self.directory.refresh_tokens.get(form.get("refresh_token", ""))
        if grant is None or grant.app is not app:
            raise DirectoryError(
                400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid."
            )
        scope = form.get("scope") or " ".join(grant.scopes)
        echoed, permissions = self.directory.delegated_permissions(app, scope)
        fresh = UserGrant(app, grant.user, echoed, permissions)
        return self._user_tokens(fresh, form, scope + " offline_access")

    # -- device code -----------------------------------------------------------------------------
    def _devicecode(self, tenant_key: str, req: HttpRequest) -> Reply:
        tenant = self._tenant(tenant_key)
        form = _form(req.body)
        app = self.directory.app(form.get("client_id", ""))
        if app is None or app.tenant.id != tenant.id:
            raise DirectoryError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id')}' was not found in the "
                f"directory '{tenant.name}'.",
            )
        profile = self.profile
        scopes = tuple(form.get("scope", "").split())
        expires_at = self.clock.time() + profile.device_code_lifetime_seconds
        device_code, code = self.directory.new_device_code(app, scopes, frozenset(), expires_at)
        uri = f"{self.host}/devicelogin"
        return Reply(
            200,
            {
                "user_code": code.user_code,
                "device_code": device_code,
                "verification_uri": uri,
                "expires_in": profile.device_code_lifetime_seconds,
                "interval": profile.device_code_interval,
                "message": f"To sign in, use a web browser to open the page {uri} and enter the code "
                f"{code.user_code} to authenticate.",
            },
            note={"client_id": app.client_id},
        )

    # -- authorize -------------------------------------------------------------------------------
    def _authorize(self, tenant_key: str, req: HttpRequest) -> Reply:
        """Signs in without a UI: the user named by login_hint, or the only mailbox there is."""
        tenant = self._tenant(tenant_key)
        params = dict(urllib.parse.parse_qsl(req.query, keep_blank_values=True))
        client_id = params.get("client_id", "")
        app = self.directory.app(client_id)
        if app is None or app.tenant.id != tenant.id:
            return _error_page(
                400,
                f"AADSTS700016: Application with identifier '{client_id}' was not found in "
                f"the directory '{tenant.name}'.",
            )
        redirect_uri = params.get("redirect_uri", "")
        if not redirect_uri or (
            app.redirect_uris and not any(_redirect_matches(redirect_uri, r) for r in app.redirect_uris)
        ):
            return _error_page(
                400,
                f"AADSTS50011: The redirect URI '{redirect_uri}' specified in the request "
                f"does not match the redirect URIs configured for the application "
                f"'{client_id}'.",
            )
        state, mode = params.get("state"), params.get("response_mode", "query")

        def answer(values: dict[str, str]) -> Reply:
            if state is not None:
                values["state"] = state
            if mode == "form_post":
                inputs = "".join(
                    f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}"/>'
                    for k, v in values.items()
                )
                page = (
                    f'<html><body onload="document.forms[0].submit()"><form method="POST" '
                    f'action="{html.escape(redirect_uri)}">{inputs}</form></body></html>'
                )
                return Reply(200, page, content_type="text/html; charset=utf-8")
            sep = "&" if "?" in redirect_uri else "?"
            return Reply(302, None, {"Location": redirect_uri + sep + urllib.parse.urlencode(values)})

        def fail(error: str, description: str) -> Reply:
            return answer({"error": error, "error_description": description})

        if params.get("response_type") != "code":
            return fail(
                "unsupported_response_type",
                "AADSTS700054: response_type 'id_token' is not enabled for the application.",
            )
        hint = params.get("login_hint")
        users = {id(m): m for m in self.directory.mailboxes.values()}
        if hint:
            user = self.directory.mailbox(hint)
            if user is None:
                return fail(
                    "invalid_request",
                    f"AADSTS50034: The user account {hint} does not exist in the "
                    f"{tenant.name} directory. To sign into this application, the "
                    "account must be added to the directory.",
                )
        elif len(users) == 1:
            user = next(iter(users.values()))
        else:
            return fail(
                "login_required",
                f"AADSTS50058: Pass login_hint: the sandbox has no UI to pick one of {len(users)} users.",
            )
        scope = params.get("scope", "")
        try:
            echoed, permissions = self.directory.delegated_permissions(app, scope)
        except DirectoryError as exc:
            return fail(exc.suberror or exc.error, exc.description)
        grant = UserGrant(app, user, echoed, permissions, nonce=params.get("nonce"))
        challenge = params.get("code_challenge")
        code = self.directory.new_auth_code(
            AuthCode(
                grant,
                redirect_uri,
                challenge,
                params.get("code_challenge_method", "plain"),
                self.clock.time() + AUTH_CODE_LIFETIME,
            )
        )
        return answer({"code": code, "session_state": secrets.token_hex(16)})


def _form(body: Any) -> dict[str, str]:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))


def _basic(req: HttpRequest) -> tuple[str, str] | None:
    auth = req.headers.get("authorization", "")
    if not auth.lower().startswith("basic "):
        return None
    try:
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
    except ValueError:
        return None
    return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)


def _basic_user(req: HttpRequest) -> str | None:
    pair = _basic(req)
    return pair[0] if pair else None


def _basic_password(req: HttpRequest) -> str | None:
    pair = _basic(req)
    return pair[1] if pair else None


def _error_page(status: int, message: str) -> Reply:
    return Reply(
        status,
        f"<html><body><h1>Sign in failed</h1><p>{html.escape(message)}</p></body></html>",
        content_type="text/html; charset=utf-8",
        note={"error": message.split(":")[0]},
    )


def _redirect_matches(requested: str, registered: str) -> bool:
    """Entra ID ignores the port of a loopback redirect URI (RFC 8252 7.3): native apps listen on
    any free port, so ``http://localhost:53124/`` matches a registered ``http://localhost``."""
    if requested == registered:
        return True
    asked, known = urllib.parse.urlsplit(requested), urllib.parse.urlsplit(registered)
    loopback = {"localhost", "127.0.0.1", "::1"}
    return (
        asked.scheme == known.scheme == "http"
        and asked.hostname in loopback
        and asked.hostname == known.hostname
        and asked.path.rstrip("/") == known.path.rstrip("/")
    )

"""Entra ID emulation, driven by real msal over HTTPS."""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import jwt
import msal
import pytest
import requests
from sandbox_support import CLIENT_ID, GRAPH_SCOPE, SECRET, SENDER, TENANT, Api, message

from mailmerge.sandbox import Every, Faults, Profile, Sandbox, ScaledClock

PUBLIC_ID = "0d7e3a1c-0000-4000-8000-0000000000b1"
REDIRECT = "http://localhost:8400/callback"


def confidential(
    sb: Sandbox, http: requests.Session, credential: Any, client_id: str = CLIENT_ID, tenant: str = TENANT
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=credential,
        authority=f"{sb.authority_host}/{tenant}",
        instance_discovery=False,
        http_client=http,
    )


def public(sb: Sandbox, http: requests.Session) -> msal.PublicClientApplication:
    return msal.PublicClientApplication(
        PUBLIC_ID, authority=f"{sb.authority_host}/{TENANT}", instance_discovery=False, http_client=http
    )


def test_discovery_names_https_endpoints_on_this_server(sb: Sandbox, api: Api) -> None:
    config = api.http.get(f"{sb.authority_host}/{TENANT}/v2.0/.well-known/openid-configuration").json()
    for key in ("authorization_endpoint", "token_endpoint", "device_authorization_endpoint", "issuer"):
        assert config[key].startswith(sb.authority_host + "/"), key


def test_unknown_tenant_is_aadsts90002_and_msal_refuses_it(
    sb: Sandbox, api: Api, msal_http: requests.Session
) -> None:
    response = api.http.get(
        f"{sb.authority_host}/nowhere.onmicrosoft.com/v2.0/.well-known/openid-configuration"
    )
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]
    token = api.token_response(tenant="nowhere.onmicrosoft.com")
    assert (token.status_code, token.json()["error"], token.json()["error_codes"]) == (
        400,
        "invalid_request",
        [90002],
    )
    with pytest.raises(ValueError, match="tenant name"):
        confidential(sb, msal_http, SECRET, tenant="nowhere.onmicrosoft.com")


def test_client_secret_token_sends_mail(sb: Sandbox, api: Api, msal_http: requests.Session) -> None:
    app = confidential(sb, msal_http, SECRET)
    result = app.acquire_token_for_client(GRAPH_SCOPE)
    assert result["token_type"] == "Bearer" and result["expires_in"] == 3600
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["roles"] == ["Mail.ReadWrite", "Mail.Send"] and "scp" not in claims
    assert api.send(token=result["access_token"]).status_code == 202
    # msal caches the token itself: a second call does not reach the token endpoint
    assert app.acquire_token_for_client(GRAPH_SCOPE)["token_source"] == "cache"


@pytest.mark.parametrize(
    ("kwargs", "status", "error", "code"),
    [
        ({"secret": "wrong"}, 401, "invalid_client", 7000215),
        ({"client_id": "99999999-0000-4000-8000-000000000000"}, 400, "unauthorized_client", 700016),
        ({"scope": "https://graph.microsoft.com/Mail.Send"}, 400, "invalid_scope", 1002012),
    ],
)
def test_token_errors_look_like_entra(
    api: Api, kwargs: dict[str, str], status: int, error: str, code: int
) -> None:
    response = api.token_response(**kwargs)
    body = response.json()
    assert (response.status_code, body["error"], body["error_codes"]) == (status, error, [code])
    assert body["error_description"].startswith(f"AADSTS{code}:")
    assert {"timestamp", "trace_id", "correlation_id"} <= body.keys()


def test_wrong_secret_through_msal(sb: Sandbox, msal_http: requests.Session) -> None:
    result = confidential(sb, msal_http, "not-the-secret").acquire_token_for_client(GRAPH_SCOPE)
    assert result["error"] == "invalid_client" and 7000215 in result["error_codes"]


def test_missing_admin_consent_is_aadsts65001(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(register=False)
    sb.register_app(TENANT, CLIENT_ID, secret=SECRET, admin_consent=False)
    body = make_api(sb).token_response().json()
    assert (body["error"], body["suberror"], body["error_codes"]) == (
        "invalid_grant",
        "consent_required",
        [65001],
    )


@pytest.mark.parametrize("style", ["thumbprint", "public_certificate"])
def test_certificate_credential(
    make_sandbox: Callable[..., Sandbox],
    make_api: Callable[..., Api],
    certificate: dict[str, Any],
    style: str,
) -> None:
    sb = make_sandbox(register=False)
    sb.register_app(TENANT, CLIENT_ID, certificate_pem=certificate["cert_pem"])
    sb.add_mailbox(SENDER)
    api = make_api(sb)
    credential = {"private_key": certificate["key_pem"]}
    if style == "thumbprint":  # RS256 with x5t (SHA-1)
        credential["thumbprint"] = certificate["sha1"]
    else:  # PS256 with x5t#S256 and x5c
        credential["public_certificate"] = certificate["cert_pem"].decode()
    result = confidential(sb, api.http, credential).acquire_token_for_client(GRAPH_SCOPE)
    assert "access_token" in result, result
    assert api.send(token=result["access_token"]).status_code == 202


def test_certificate_not_registered_is_aadsts700027(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api], certificate: dict[str, Any]
) -> None:
    sb = make_sandbox()  # the app has a secret only
    credential = {"private_key": certificate["key_pem"], "thumbprint": certificate["sha1"]}
    result = confidential(sb, make_api(sb).http, credential).acquire_token_for_client(GRAPH_SCOPE)
    assert result["error"] == "invalid_client" and result["error_codes"] == [700027]


def test_forged_assertion_signature_is_refused(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api], certificate: dict[str, Any]
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    sb = make_sandbox(register=False)
    sb.register_app(TENANT, CLIENT_ID, certificate_pem=certificate["cert_pem"])
    api = make_api(sb)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # the right thumbprint, signed with another key
    result = confidential(
        sb, api.http, {"private_key": other_key.decode(), "thumbprint": certificate["sha1"]}
    ).acquire_token_for_client(GRAPH_SCOPE)
    assert result["error"] == "invalid_client" and result["error_codes"] == [700027]


def test_assertion_for_another_audience_is_refused(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api], certificate: dict[str, Any]
) -> None:
    import base64

    sb = make_sandbox(register=False)
    sb.register_app(TENANT, CLIENT_ID, certificate_pem=certificate["cert_pem"])
    api = make_api(sb)
    x5t = base64.urlsafe_b64encode(bytes.fromhex(certificate["sha1"])).rstrip(b"=").decode()
    now = int(time.time())
    assertion = jwt.encode(
        {
            "aud": "https://login.microsoftonline.com/other/oauth2/v2.0/token",
            "iss": CLIENT_ID,
            "sub": CLIENT_ID,
            "exp": now + 600,
            "iat": now,
            "jti": "1",
        },
        certificate["key_pem"],
        algorithm="RS256",
        headers={"x5t": x5t},
    )
    form = {
        "client_id": CLIENT_ID,
        "grant_type": "client_credentials",
        "scope": GRAPH_SCOPE[0],
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    response = api.http.post(f"{sb.authority_host}/{TENANT}/oauth2/v2.0/token", data=form)
    assert response.status_code == 401 and response.json()["error_codes"] == [700027]
    assert "audience" in response.json()["error_description"]


def _public_sandbox(make_sandbox: Callable[..., Sandbox], clock: Any = None, **profile: Any) -> Sandbox:
    sb = make_sandbox(Profile(**profile), clock=clock)
    sb.register_app(TENANT, PUBLIC_ID, public_client=True)
    sb.add_mailbox("other@contoso.example")
    return sb


def test_device_code_flow(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    sb = _public_sandbox(make_sandbox)
    api = make_api(sb)
    app = public(sb, api.http)
    flow = app.initiate_device_flow(scopes=["Mail.Send"])
    assert flow["interval"] == 1 and flow["user_code"] in flow["message"]
    # before approval the poll says authorization_pending (400)
    form = {
        "client_id": PUBLIC_ID,
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": flow["device_code"],
    }
    pending = api.http.post(f"{sb.authority_host}/{TENANT}/oauth2/v2.0/token", data=form)
    assert (pending.status_code, pending.json()["error"]) == (400, "authorization_pending")
    approver = threading.Timer(0.3, sb.approve_device_code, (flow["user_code"], SENDER))
    approver.start()
    result = app.acquire_token_by_device_flow(flow)
    approver.join()
    assert result["id_token_claims"]["preferred_username"] == SENDER
    assert result["scope"].split()[0] == "Mail.Send" and "refresh_token" in result
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["scp"] == "mail.send" and "roles" not in claims
    assert [a["username"] for a in app.get_accounts()] == [SENDER]
    # a delegated token sends as its own user through /me and /users/{self}, and not as anyone else
    token = result["access_token"]
    assert api.post("/me/sendMail", {"message": message()}, token=token).status_code == 202
    assert api.send(token=token).status_code == 202
    other = api.send(token=token, mailbox="other@contoso.example")
    assert (other.status_code, other.json()["error"]["code"]) == (403, "ErrorSendAsDenied")


def test_device_code_expires(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    clock = ScaledClock(factor=1)
    sb = _public_sandbox(make_sandbox, clock=clock)
    api = make_api(sb)
    flow = public(sb, api.http).initiate_device_flow(scopes=["Mail.Send"])
    clock.advance(901)
    form = {
        "client_id": PUBLIC_ID,
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": flow["device_code"],
    }
    response = api.http.post(f"{sb.authority_host}/{TENANT}/oauth2/v2.0/token", data=form)
    assert (response.status_code, response.json()["error"]) == (400, "expired_token")


def _authorize(api: Api, flow: dict[str, Any]) -> dict[str, str]:
    response = api.http.get(flow["auth_uri"], allow_redirects=False)
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def test_auth_code_flow_with_pkce(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    sb = _public_sandbox(make_sandbox)
    api = make_api(sb)
    app = public(sb, api.http)
    with pytest.warns(UserWarning, match="form_post"):
        flow = app.initiate_auth_code_flow(["Mail.Send"], redirect_uri=REDIRECT, login_hint=SENDER)
    auth_response = _authorize(api, flow)
    assert auth_response["state"] == flow["state"]
    # msal checks that the id_token echoes the nonce it sent to /authorize
    result = app.acquire_token_by_auth_code_flow(flow, auth_response)
    assert "access_token" in result, result
    assert result["id_token_claims"]["nonce"] and result["id_token_claims"]["preferred_username"] == SENDER
    assert api.post("/me/sendMail", {"message": message()}, token=result["access_token"]).status_code == 202
    # the code is single-use
    again = app.acquire_token_by_auth_code_flow(dict(flow), auth_response)
    assert again.get("error") == "invalid_grant"


def test_auth_code_flow_form_post(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    sb = _public_sandbox(make_sandbox)
    api = make_api(sb)
    app = public(sb, api.http)
    flow = app.initiate_auth_code_flow(
        ["Mail.Send"], redirect_uri=REDIRECT, login_hint=SENDER, response_mode="form_post"
    )
    page = api.http.get(flow["auth_uri"], allow_redirects=False)
    assert page.status_code == 200 and f'action="{REDIRECT}"' in page.text
    import re

    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', page.text))
    assert "access_token" in app.acquire_token_by_auth_code_flow(flow, fields)


def test_pkce_verifier_must_match(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    sb = _public_sandbox(make_sandbox)
    api = make_api(sb)
    app = public(sb, api.http)
    with pytest.warns(UserWarning, match="form_post"):
        flow = app.initiate_auth_code_flow(["Mail.Send"], redirect_uri=REDIRECT, login_hint=SENDER)
    auth_response = _authorize(api, flow)
    flow["code_verifier"] = "x" * 43
    result = app.acquire_token_by_auth_code_flow(flow, auth_response)
    assert result["error"] == "invalid_grant" and result["error_codes"] == [50148]


def test_authorize_errors_come_back_as_redirects(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = _public_sandbox(make_sandbox)
    api = make_api(sb)
    app = public(sb, api.http)
    with pytest.warns(UserWarning, match="form_post"):
        flow = app.initiate_auth_code_flow(["Calendars.Read"], redirect_uri=REDIRECT, login_hint=SENDER)
    response = _authorize(api, flow)
    assert response["error"] == "consent_required" and "AADSTS65001" in response["error_description"]


def test_refresh_after_expiry(make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]) -> None:
    clock = ScaledClock(factor=1)
    # msal treats a token with under 5 minutes left as expired, so a 240 s lifetime makes it refresh
    sb = _public_sandbox(make_sandbox, clock=clock, token_lifetime_seconds=240)
    api = make_api(sb)
    app = public(sb, api.http)
    with pytest.warns(UserWarning, match="form_post"):
        flow = app.initiate_auth_code_flow(["Mail.Send"], redirect_uri=REDIRECT, login_hint=SENDER)
    first = app.acquire_token_by_auth_code_flow(flow, _authorize(api, flow))["access_token"]
    assert api.post("/me/sendMail", {"message": message()}, token=first).status_code == 202
    clock.advance(241)
    expired = api.post("/me/sendMail", {"message": message()}, token=first)
    assert (expired.status_code, expired.json()["error"]["code"]) == (401, "InvalidAuthenticationToken")
    account = app.get_accounts()[0]
    refreshed = app.acquire_token_silent(["Mail.Send"], account=account)
    assert refreshed is not None and refreshed["token_source"] == "identity_provider"
    assert refreshed["access_token"] != first
    assert (
        api.post("/me/sendMail", {"message": message()}, token=refreshed["access_token"]).status_code == 202
    )
    grants = [e.get("grant") for e in sb.request_log() if e["path"].endswith("/token")]
    assert grants == ["authorization_code", "refresh_token"]


def test_app_token_cannot_use_me(api: Api) -> None:
    response = api.post("/me/sendMail", {"message": message()})
    assert (response.status_code, response.json()["error"]["code"]) == (400, "BadRequest")


def test_token_endpoint_fault_carries_retry_after(
    make_sandbox: Callable[..., Sandbox], make_api: Callable[..., Api]
) -> None:
    sb = make_sandbox(Profile(faults=Faults(seed=3, token_error=Every(2))))
    api = make_api(sb)
    statuses = [api.token_response() for _ in range(4)]
    assert [r.status_code for r in statuses][0::2] == [200, 200]
    for failed in statuses[1::2]:
        assert failed.status_code in (429, 503) and int(failed.headers["Retry-After"]) >= 1
    assert [e["fault"] for e in sb.request_log()] == [None, "token_error", None, "token_error"]


def test_loopback_redirect_uri_matches_on_any_port() -> None:
    """A registered http://localhost takes http://localhost:PORT, as Entra ID does for native apps."""
    import requests

    from mailmerge.sandbox import Profile, Sandbox

    with Sandbox(Profile()) as sb:
        sb.register_app(
            tenant="contoso.onmicrosoft.com",
            client_id="native",
            public_client=True,
            redirect_uris=("http://localhost",),
        )
        sb.add_mailbox("news@contoso.example")
        session = requests.Session()
        session.trust_env = False
        session.verify = str(sb.ca_file)
        base = f"{sb.authority_host}/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
        common = {"client_id": "native", "response_type": "code", "scope": "openid", "state": "s"}
        good = session.get(
            base, params={**common, "redirect_uri": "http://localhost:53124/"}, allow_redirects=False
        )
        assert good.status_code == 302
        assert good.headers["Location"].startswith("http://localhost:53124/?")
        bad = session.get(
            base, params={**common, "redirect_uri": "http://evil.example:53124/"}, allow_redirects=False
        )
        assert bad.status_code == 400 and "AADSTS50011" in bad.text

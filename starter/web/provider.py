"""Signing in to the pages through the team's identity provider: OpenID Connect's
authorization code flow with PKCE (RFC 7636), when STAGEFLOW_OIDC_ISSUER is set.

    GET /sign-in/provider            a new flow: state, nonce and a PKCE verifier kept in
                                     a short-lived HttpOnly cookie of this path; the
                                     browser is sent to the provider's authorization
                                     endpoint with the verifier's S256 challenge
    GET /sign-in/provider/callback   the provider sends the browser back with a code:
                                     the state must be this browser's flow's, the code
                                     is exchanged (with the verifier) for an ID token,
                                     which is verified like a bearer JWT (its keys, its
                                     issuer, audience = our client id, expiry) and must
                                     carry the flow's nonce; then a session opens

The person is the token's username claim, their groups its groups claim (`oidc:NAME`),
as for the API's OIDC bearer tokens; the session says `oidc <issuer>` in the trail.
The redirect URI registered at the provider is `<STAGEFLOW_PUBLIC_URL>/sign-in/provider/
callback` (or this server's own URL, without a public URL).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from activities.record import open_session
from activities.record.identity import get_user
from starter.api.app import Service, ServiceDep
from starter.api.oidc import InvalidToken, OidcVerifier
from starter.web.session import local_path, served_over_tls, signed_in

FLOW_COOKIE = "stageflow_sign_in"
FLOW_PATH = "/sign-in/provider"
# A person has this long at the provider's page before the flow is forgotten.
FLOW_SECONDS = 600


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _callback_url(request: Request, svc: Service) -> str:
    base = svc.settings.public_url or str(request.base_url).rstrip("/")
    return f"{base}{FLOW_PATH}/callback"


def add_provider_sign_in(pages: APIRouter, page: Any) -> None:
    """The two routes above; `page(request, template, visitor, status, **context)`
    draws the pages' error and sign-in pages."""

    def refused(request: Request, status: int, detail: str) -> Response:
        return page(request, "error.html.j2", None, status, title="Not signed in", detail=detail)

    @pages.get(FLOW_PATH)
    async def start(request: Request, svc: ServiceDep, next: str = "/") -> Response:
        verifier = svc.authenticator.oidc
        if verifier is None:
            return refused(request, 404, "No identity provider is configured here.")
        try:
            authorize, _ = await verifier.endpoints()
        except InvalidToken as err:
            return refused(request, 503, f"The identity provider did not answer: {err.reason}")
        flow = {
            "state": secrets.token_urlsafe(32),
            "nonce": secrets.token_urlsafe(32),
            "verifier": secrets.token_urlsafe(48),
            "next": local_path(next),
        }
        query = urlencode(
            {
                "response_type": "code",
                "client_id": verifier.settings.client,
                "redirect_uri": _callback_url(request, svc),
                "scope": verifier.settings.scopes,
                "state": flow["state"],
                "nonce": flow["nonce"],
                "code_challenge": _challenge(flow["verifier"]),
                "code_challenge_method": "S256",
            }
        )
        sep = "&" if "?" in authorize else "?"
        response = RedirectResponse(f"{authorize}{sep}{query}", status_code=303)
        response.set_cookie(
            FLOW_COOKIE,
            base64.urlsafe_b64encode(json.dumps(flow).encode()).decode(),
            max_age=FLOW_SECONDS,
            httponly=True,
            samesite="lax",
            secure=served_over_tls(request),
            path=FLOW_PATH,
        )
        return response

    @pages.get(f"{FLOW_PATH}/callback")
    async def callback(
        request: Request,
        svc: ServiceDep,
        code: str = "",
        state: str = "",
        error: str = "",
        error_description: str = "",
    ) -> Response:
        verifier = svc.authenticator.oidc
        if verifier is None:
            return refused(request, 404, "No identity provider is configured here.")
        flow = _flow_of(request)
        if flow is None or not secrets.compare_digest(str(flow.get("state", "")), state):
            return refused(
                request,
                400,
                "This sign-in was not started from this browser (or took over 10 minutes). "
                "Sign in again.",
            )
        if error:
            return refused(
                request, 401, f"The identity provider said: {error_description or error}"
            )
        try:
            token = await _id_token(request, svc, verifier, code, str(flow["verifier"]))
            who = await verifier.verify(
                token, nonce=str(flow["nonce"]), audience=verifier.settings.client
            )
        except InvalidToken as err:
            return refused(
                request, 401, f"The identity provider's answer was refused: {err.reason}"
            )
        person = await get_user(svc.db, who.user)
        if person is not None and person.disabled_at is not None:
            return refused(request, 401, f"{who.user} is disabled.")
        opened = await open_session(
            svc.db, user=who.user, via=f"oidc {who.issuer}", groups=who.groups
        )
        response = signed_in(request, local_path(str(flow.get("next", "/"))), opened)
        response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
        return response


def _flow_of(request: Request) -> dict[str, Any] | None:
    raw = request.cookies.get(FLOW_COOKIE)
    if not raw:
        return None
    try:
        found = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, TypeError):
        return None
    return found if isinstance(found, dict) else None


async def _id_token(
    request: Request, svc: Service, verifier: OidcVerifier, code: str, code_verifier: str
) -> str:
    """The code exchanged at the token endpoint for the ID token (InvalidToken if not)."""
    if not code:
        raise InvalidToken("no authorization code came back")
    _, token_url = await verifier.endpoints()
    fields = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": _callback_url(request, svc),
        "client_id": verifier.settings.client,
        "code_verifier": code_verifier,
    }
    if verifier.settings.client_secret:
        fields["client_secret"] = verifier.settings.client_secret
    http = svc.http
    if http is None:
        raise InvalidToken("no HTTP client to reach the token endpoint")
    try:
        answer = await http.post(token_url, data=fields, headers={"Accept": "application/json"})
    except httpx.HTTPError as err:
        raise InvalidToken(f"the token endpoint did not answer ({type(err).__name__})") from None
    try:
        body = answer.json()
    except ValueError:
        body = {}
    if answer.status_code != 200 or not isinstance(body, dict):
        what = body.get("error_description") or body.get("error") if isinstance(body, dict) else ""
        raise InvalidToken(f"the token endpoint said {answer.status_code} {what or ''}".strip())
    token = body.get("id_token")
    if not isinstance(token, str) or not token:
        raise InvalidToken("the token endpoint gave no ID token")
    return token

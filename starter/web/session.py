"""Who a page request comes from: the session cookie a sign-in set (issue 14).

The pages sign people in with a personal token (pasted once into the sign-in form)
and keep them signed in with a session of the record (activities/record/sessions.py):
an HttpOnly, SameSite=Lax cookie, Secure when the page is served over https. Every
form carries the session's CSRF token; a post without it (or with another one) is
refused 403 and kept in the API's trail as forbidden, as the API's own refusals are.

The person is then the same Principal the API knows (starter/api/auth.py), and what
they may do is Access's (starter/api/access.py): the pages and the API cannot differ.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse

from activities.record import session_identity
from activities.record.sessions import NewSession, SessionIdentity
from starter.api.access import Access
from starter.api.app import Service, service
from starter.api.auth import Principal

COOKIE = "stageflow_session"


class SignInNeeded(Exception):
    """A page asked for without a (valid) session: answered with the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


@dataclass(frozen=True)
class Visitor:
    """A signed-in person on a page: who, what they may do, their session's CSRF token."""

    principal: Principal
    access: Access
    session: SessionIdentity

    @property
    def csrf(self) -> str:
        return self.session.csrf.get_secret_value()

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented, self.csrf)


async def current_visitor(request: Request, svc: Service) -> Visitor | None:
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    found = await session_identity(svc.db, cookie)
    if found is None:
        return None
    principal = Principal(
        user=found.user, groups=found.groups, via=found.via, is_admin=found.is_admin
    )
    return Visitor(principal=principal, access=Access(svc.db, principal), session=found)


async def visitor(request: Request, svc: Annotated[Service, Depends(service)]) -> Visitor:
    """The signed-in person, or SignInNeeded (the sign-in page, then back here)."""
    found = await current_visitor(request, svc)
    if found is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInNeeded(target)
    return found


VisitorDep = Annotated[Visitor, Depends(visitor)]


def local_path(text: str | None) -> str:
    """Where to go after signing in: a path of this site only (never another host)."""
    if not text:
        return "/"
    parts = urlsplit(text)
    if parts.scheme or parts.netloc or not text.startswith("/") or text.startswith("//"):
        return "/"
    return text


def sign_in_url(next_path: str) -> str:
    return "/sign-in?next=" + quote(local_path(next_path), safe="/")


def served_over_tls(request: Request) -> bool:
    return request.url.scheme == "https"


def signed_in(request: Request, target: str, opened: NewSession) -> RedirectResponse:
    """The answer to a sign-in (with a token, or through the provider): the session's
    cookie — HttpOnly, SameSite=Lax, Secure over https, for the whole site — and on to
    `target`."""
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        opened.cookie.get_secret_value(),
        expires=opened.expires_at,
        httponly=True,
        samesite="lax",
        secure=served_over_tls(request),
        path="/",
    )
    return response

"""Signing in to the web pages and staying signed in (issue 14): sessions of the record,
their cookie, their end. The real app in this process (httpx's ASGI transport, its
lifespan run) on a real record, SQLite and PostgreSQL; no Temporal is needed to sign in.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from activities.record import Database, open_database, upgrade
from activities.record.identity import (
    add_user,
    create_token,
    disable_user,
    get_user,
    revoke_token,
)
from activities.record.sessions import WebSessionRow, open_session, session_identity
from starter.api.app import create_app
from starter.web.session import COOKIE
from worker.settings import Settings


@pytest.fixture
async def db(record_url: str) -> AsyncIterator[Database]:
    await upgrade(record_url)
    database = open_database(record_url)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def site(db: Database, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # Temporal is never reached here: signing in and out reads the record only.
    settings = Settings.from_env(
        {"STAGEFLOW_DATA_DIR": str(tmp_path / "data"), "TEMPORAL_ADDRESS": "127.0.0.1:9"}
    )
    app = create_app(settings, db=db)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pages") as client:
            yield client


async def token_of(db: Database, name: str) -> str:
    person = await add_user(db, name)
    return (await create_token(db, person)).token.get_secret_value()


async def sign_in(site: httpx.AsyncClient, token: str, next_path: str = "/") -> httpx.Response:
    return await site.post("/sign-in", data={"token": token, "next": next_path})


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def test_a_page_without_a_session_sends_to_sign_in_and_back(
    site: httpx.AsyncClient, db: Database
) -> None:
    answer = await site.get("/approvals?x=1")
    assert (answer.status_code, answer.headers["location"]) == (
        303,
        "/sign-in?next=/approvals%3Fx%3D1",
    )
    signed = await sign_in(site, await token_of(db, "alice"), "/approvals?x=1")
    assert (signed.status_code, signed.headers["location"]) == (303, "/approvals?x=1")
    page = await site.get("/approvals")
    assert page.status_code == 200 and 'Signed in as <b data-testid="me">alice</b>' in page.text


async def test_the_cookie_is_httponly_and_samesite_and_holds_no_token(
    site: httpx.AsyncClient, db: Database
) -> None:
    token = await token_of(db, "alice")
    answer = await sign_in(site, token)
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=sfs_")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # http here; over https it is Secure (next test)
    assert token.split("_", 2)[2] not in cookie  # the token's secret (it may hold "_")
    async with db.reading() as session:
        rows = (await session.execute(select(WebSessionRow))).scalars().all()
    (row,) = rows
    assert (row.user, row.via) == ("alice", f"token {token.split('_')[1]}")
    assert row.secret_hash not in cookie and cookie.split(";")[0].split("_")[2] != row.secret_hash


async def test_over_https_the_cookie_is_secure(db: Database, tmp_path: Path) -> None:
    settings = Settings.from_env({"STAGEFLOW_DATA_DIR": str(tmp_path), "TEMPORAL_ADDRESS": "x:9"})
    app = create_app(settings, db=db)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://pages") as client:
            answer = await sign_in(client, await token_of(db, "alice"))
    assert "Secure" in answer.headers["set-cookie"]


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("", "no credentials"),
        ("sft_0123456789abcdef_" + "x" * 43, "the token is invalid, revoked or expired"),
        ("eyJhbGciOi.not.ajwt", "no OIDC issuer is configured"),
    ],
)
async def test_a_bad_token_is_refused_on_the_sign_in_page_with_the_reason(
    site: httpx.AsyncClient, token: str, says: str
) -> None:
    answer = await sign_in(site, token)
    assert answer.status_code == 401
    assert says in answer.text
    assert "set-cookie" not in answer.headers


async def test_revoking_the_token_or_disabling_its_person_ends_the_session(
    site: httpx.AsyncClient, db: Database
) -> None:
    token = await token_of(db, "alice")
    await sign_in(site, token)
    assert (await site.get("/")).status_code == 200
    alice = await get_user(db, "alice")
    assert alice is not None
    await revoke_token(db, alice, token.split("_")[1])
    assert (await site.get("/")).status_code == 303

    bob_token = await token_of(db, "bob")
    await sign_in(site, bob_token)
    assert (await site.get("/")).status_code == 200
    await disable_user(db, "bob")
    assert (await site.get("/")).status_code == 303


async def test_signing_out_ends_the_session_even_for_a_copy_of_its_cookie(
    site: httpx.AsyncClient, db: Database
) -> None:
    await sign_in(site, await token_of(db, "alice"))
    kept = site.cookies[COOKIE]
    forged = await site.post("/sign-out", data={"csrf": "0" * 64})
    assert forged.status_code == 403
    assert (await site.get("/")).status_code == 200  # still signed in
    out = await site.post("/sign-out", data={"csrf": csrf_of((await site.get("/")).text)})
    assert (out.status_code, out.headers["location"]) == (303, "/sign-in")
    site.cookies.set(COOKIE, kept)
    assert (await site.get("/")).status_code == 303


async def test_an_expired_session_signs_nobody_in(db: Database) -> None:
    await add_user(db, "carol")
    opened = await open_session(
        db,
        user="carol",
        via="oidc https://idp.example",
        lifetime=timedelta(hours=1),
        now=datetime.now(UTC) - timedelta(hours=2),
    )
    assert await session_identity(db, opened.cookie.get_secret_value()) is None
    fresh = await open_session(db, user="carol", via="oidc https://idp.example")
    found = await session_identity(db, fresh.cookie.get_secret_value())
    assert found is not None and (found.user, found.via) == ("carol", "oidc https://idp.example")
    # Another session's CSRF token is not this one's.
    other = await session_identity(
        db, (await open_session(db, user="carol", via="x")).cookie.get_secret_value()
    )
    assert other is not None and other.csrf.get_secret_value() != found.csrf.get_secret_value()


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "evil", ""])
async def test_sign_in_goes_back_only_to_a_page_of_this_site(
    site: httpx.AsyncClient, db: Database, target: str
) -> None:
    answer = await sign_in(site, await token_of(db, "alice"), target)
    assert (answer.status_code, answer.headers["location"]) == (303, "/")

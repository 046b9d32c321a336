"""Signing in to the pages through the identity provider (issue 14): the authorization
code flow with PKCE against a real provider on loopback (tests/idp.py, its key made
here), the app in this process on a real record. Each hop is followed by hand, as a
browser would, so every redirect and cookie is looked at.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from activities.record import Database, open_database, session_identity, upgrade
from activities.record.identity import add_user, disable_user
from starter.api.app import create_app
from starter.api.oidc import OidcSettings
from starter.web.provider import FLOW_COOKIE
from starter.web.session import COOKIE
from tests.idp import Person, Provider
from worker.settings import Settings

CLIENT = "stageflow-pages"


@pytest.fixture
def provider() -> Iterator[Provider]:
    found = Provider(client_id=CLIENT).start()
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'record.db'}"
    await upgrade(url)
    database = open_database(url)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def site(
    db: Database, provider: Provider, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings.from_env(
        {"STAGEFLOW_DATA_DIR": str(tmp_path / "data"), "TEMPORAL_ADDRESS": "127.0.0.1:9"}
    )
    oidc = OidcSettings(issuer=provider.url, audience="stageflow-api", client_id=CLIENT)
    app = create_app(settings, db=db, oidc=oidc)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pages") as client:
            yield client


async def start(site: httpx.AsyncClient, next_path: str = "/approvals") -> str:
    """Press the sign-in page's provider button: where the browser is sent."""
    page = await site.get(f"/sign-in?next={next_path}")
    assert 'href="/sign-in/provider?next=' in page.text
    answer = await site.get(f"/sign-in/provider?next={next_path}")
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{FLOW_COOKIE}=") and "HttpOnly" in cookie
    assert "Path=/sign-in/provider" in cookie and "SameSite=lax" in cookie
    return answer.headers["location"]


async def at_provider(location: str) -> str:
    """The provider signs its person in at once and sends the browser back."""
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(location)
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


async def test_a_person_of_the_provider_signs_in_with_their_groups_and_pkce(
    site: httpx.AsyncClient, provider: Provider, db: Database
) -> None:
    location = await start(site)
    asked = parse_qs(urlsplit(location).query)
    assert location.startswith(f"{provider.url}/authorize?")
    assert asked["client_id"] == [CLIENT] and asked["response_type"] == ["code"]
    assert asked["code_challenge_method"] == ["S256"] and asked["scope"] == ["openid profile"]
    assert asked["redirect_uri"] == ["http://pages/sign-in/provider/callback"]

    back = await at_provider(location)
    answer = await site.get(back.removeprefix("http://pages"))
    assert (answer.status_code, answer.headers["location"]) == (303, "/approvals")
    session = site.cookies[COOKIE]
    found = await session_identity(db, session)
    assert found is not None
    assert (found.user, found.groups, found.via, found.is_admin) == (
        "olivia",
        ("oidc:release-managers",),
        f"oidc {provider.url}",
        False,
    )
    # The verifier went to the token endpoint, never in the browser's URL.
    (token_request,) = [form for path, form in provider.requests if path == "/token"]
    assert token_request["code_verifier"] and token_request["code_verifier"] not in location
    page = await site.get("/approvals")
    assert 'data-testid="me">olivia<' in page.text


async def test_a_callback_this_browser_did_not_start_is_refused(
    site: httpx.AsyncClient, provider: Provider
) -> None:
    location = await start(site)
    back = await at_provider(location)
    site.cookies.delete(FLOW_COOKIE, path="/sign-in/provider")
    answer = await site.get(back.removeprefix("http://pages"))
    assert answer.status_code == 400
    assert "not started from this browser" in answer.text
    assert COOKIE not in site.cookies


async def test_a_state_of_another_flow_is_refused(
    site: httpx.AsyncClient, provider: Provider
) -> None:
    first = await at_provider(await start(site))
    await start(site)  # a second flow: the browser's cookie is now its state
    answer = await site.get(first.removeprefix("http://pages"))
    assert answer.status_code == 400
    assert COOKIE not in site.cookies


async def test_a_code_used_twice_or_a_disabled_person_signs_nobody_in(
    site: httpx.AsyncClient, provider: Provider, db: Database
) -> None:
    location = await start(site)
    back = await at_provider(location)
    assert (await site.get(back.removeprefix("http://pages"))).status_code == 303
    site.cookies.delete(COOKIE)
    # The same code again, under the state of a new flow of this browser: the provider
    # gives an ID token for a code once.
    again = await start(site)
    replayed = back.replace(
        parse_qs(urlsplit(back).query)["state"][0], parse_qs(urlsplit(again).query)["state"][0]
    )
    answer = await site.get(replayed.removeprefix("http://pages"))
    assert answer.status_code == 401
    assert "unknown code" in answer.text

    provider.person = Person("dora", [])
    await add_user(db, "dora")
    await disable_user(db, "dora")
    answer = await site.get((await at_provider(await start(site))).removeprefix("http://pages"))
    assert answer.status_code == 401 and "dora is disabled" in answer.text
    assert COOKIE not in site.cookies


async def test_without_a_provider_the_sign_in_page_offers_only_tokens(
    db: Database, tmp_path: Path
) -> None:
    settings = Settings.from_env({"STAGEFLOW_DATA_DIR": str(tmp_path), "TEMPORAL_ADDRESS": "x:9"})
    app = create_app(settings, db=db, oidc=None)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pages") as client:
            page = await client.get("/sign-in")
            assert "/sign-in/provider" not in page.text
            assert (await client.get("/sign-in/provider")).status_code == 404

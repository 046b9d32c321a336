"""The identity routes of the API (starter/api/routes_identity.py): personal tokens,
role grants and people, through the real app in process over a real record, on SQLite
and on PostgreSQL (skipped there only when the server binaries are missing). These
routes never need Temporal: the app has no client.

A person signed in through OIDC is put in front of the app by overriding its
`principal` dependency (how a verified JWT is checked is tests/test_oidc.py's).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from activities.record import Database, open_database, upgrade
from activities.record.identity import (
    TOKEN_PATTERN,
    ApiToken,
    NewToken,
    add_user,
    create_token,
    get_user,
    grant,
    list_grants,
)
from starter.api.app import create_app, principal
from starter.api.auth import Principal
from starter.api.routes_identity import NOT_IN_RECORD
from tests.conftest import wait_for
from worker.settings import Settings

V1 = "/api/v1"


# --- fixtures: the app over the same record on SQLite and PostgreSQL -----------------


@pytest.fixture
async def db(record_url: str) -> AsyncIterator[Database]:
    await upgrade(record_url)
    database = open_database(record_url)
    try:
        yield database
    finally:
        await database.close()


@dataclass
class Api:
    """The running app, its HTTP client and its record."""

    app: FastAPI
    http: httpx.AsyncClient
    db: Database

    async def person(self, name: str, admin: bool = False) -> NewToken:
        """A person added to the record, with a token made there."""
        user = await add_user(self.db, name, admin=admin)
        return await create_token(self.db, user, name="made in the record")

    def signed_in_through_oidc(self, user: str, *groups: str) -> None:
        """From now on, every request comes from `user` of the identity provider."""
        who = Principal(user=user, groups=groups, via="oidc https://idp.example")
        self.app.dependency_overrides[principal] = lambda: who

    async def request(
        self, method: str, path: str, token: NewToken | str | None, body: Any = None
    ) -> httpx.Response:
        return await self.http.request(method, f"{V1}{path}", headers=bearer(token), json=body)


@pytest.fixture
async def api(db: Database, tmp_path: Path) -> AsyncIterator[Api]:
    app = create_app(Settings(data_dir=tmp_path / "data"), db=db, oidc=None)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as http:
            yield Api(app=app, http=http, db=db)


def bearer(token: NewToken | str | None) -> dict[str, str]:
    if token is None:
        return {}
    plain = token if isinstance(token, str) else token.token.get_secret_value()
    return {"Authorization": f"Bearer {plain}"}


def secret_of(plain: str) -> str:
    match = TOKEN_PATTERN.fullmatch(plain)
    assert match is not None, "not a personal token"
    return match["secret"]


def invalid_fields(response: httpx.Response) -> set[str]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return {p["name"] for p in response.json()["invalid_params"]}


def webapp_grant(subject: str, role: str, stage: str | None = None) -> dict[str, Any]:
    return {"pipeline": "webapp", "stage": stage, "subject": subject, "role": role}


# --- tokens --------------------------------------------------------------------------


async def test_a_token_made_through_the_api_signs_in_until_it_is_revoked(api: Api) -> None:
    alice = await api.person("alice")
    made = await api.request("POST", "/tokens", alice, {"name": "laptop", "expires_in": "90d"})
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    new = made.json()
    assert TOKEN_PATTERN.fullmatch(new["token"])
    assert (new["user"], new["name"]) == ("alice", "laptop")
    lifetime = datetime.fromisoformat(new["expires_at"]) - datetime.fromisoformat(new["created_at"])
    assert lifetime == timedelta(days=90)

    me = await api.request("GET", "/me", new["token"])
    assert me.status_code == 200, me.text
    assert (me.json()["user"], me.json()["via"]) == ("alice", f"token {new['token_id']}")

    revoked = await api.request("DELETE", f"/tokens/{new['token_id']}", alice)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    refused = await api.request("GET", "/me", new["token"])
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    # Only that token: the one it was made with still signs in.
    assert (await api.request("GET", "/me", alice)).status_code == 200


async def test_listing_tokens_never_shows_a_secret_nor_its_hash(api: Api) -> None:
    alice = await api.person("alice")
    bob = await api.person("bob")
    made = [
        (await api.request("POST", "/tokens", alice, {"name": name})).json()["token"]
        for name in ("laptop", "ci")
    ]
    listed = await api.request("GET", "/tokens", alice)
    assert listed.status_code == 200, listed.text
    assert [t["name"] for t in listed.json()] == ["made in the record", "laptop", "ci"]
    assert all(set(t) == set(ApiToken.model_fields) for t in listed.json())
    for plain in [*made, alice.token.get_secret_value()]:
        secret = secret_of(plain)
        assert secret not in listed.text
        assert hashlib.sha256(secret.encode()).hexdigest() not in listed.text
    assert bob.token_id not in listed.text

    # Nor does the record keep any secret in clear.
    async with api.db.reading() as session:
        rows = repr((await session.execute(text("SELECT * FROM api_tokens"))).all())
    for plain in made:
        assert secret_of(plain) not in rows


async def test_a_token_of_another_person_is_unknown_to_them_but_an_admin_revokes_it(
    api: Api,
) -> None:
    root = await api.person("root", admin=True)
    alice = await api.person("alice")
    bob = await api.person("bob")

    assert (await api.request("DELETE", f"/tokens/{bob.token_id}", alice)).status_code == 404
    assert (await api.request("GET", "/me", bob)).status_code == 200
    assert (await api.request("DELETE", "/tokens/0123456789abcdef", alice)).status_code == 404
    # Only an admin reads another person's list.
    assert (await api.request("GET", "/tokens?user=bob", alice)).status_code == 403
    listed = await api.request("GET", "/tokens?user=bob", root)
    assert [t["token_id"] for t in listed.json()] == [bob.token_id]

    revoked = await api.request("DELETE", f"/tokens/{bob.token_id}", root)
    assert revoked.status_code == 200, revoked.text
    assert (await api.request("GET", "/me", bob)).status_code == 401


async def test_an_expired_token_is_refused(api: Api) -> None:
    alice = await api.person("alice")
    person = await get_user(api.db, "alice")
    assert person is not None
    long_ago = await create_token(
        api.db, person, expires_in=timedelta(hours=1), now=datetime.now(UTC) - timedelta(hours=2)
    )
    assert (await api.request("GET", "/me", long_ago)).status_code == 401

    brief = await api.request("POST", "/tokens", alice, {"name": "brief", "expires_in": "50ms"})
    assert brief.status_code == 201, brief.text

    async def expired() -> bool:
        return (await api.request("GET", "/me", brief.json()["token"])).status_code == 401

    await wait_for(expired, timeout=5, what="the 50 ms token to expire")


async def test_a_lifetime_that_is_not_a_positive_duration_is_422_naming_body_expires_in(
    api: Api,
) -> None:
    alice = await api.person("alice")
    for lifetime in ("soon", "0s", -5):
        answer = await api.request("POST", "/tokens", alice, {"expires_in": lifetime})
        assert invalid_fields(answer) == {"body.expires_in"}, lifetime
    # A misspelt field is refused, not taken for a token that never expires.
    answer = await api.request("POST", "/tokens", alice, {"expires": "90d"})
    assert invalid_fields(answer) == {"body.expires"}
    listed = await api.request("GET", "/tokens", alice)
    assert [t["token_id"] for t in listed.json()] == [alice.token_id]


async def test_a_person_of_the_identity_provider_not_in_the_record_gets_no_personal_token(
    api: Api,
) -> None:
    api.signed_in_through_oidc("olga", "oidc:developers")
    answer = await api.request("POST", "/tokens", None, {"name": "laptop"})
    assert answer.status_code == 403
    assert answer.json()["detail"] == NOT_IN_RECORD
    assert (await api.request("GET", "/tokens", None)).json() == []
    assert await get_user(api.db, "olga") is None


async def test_every_identity_route_wants_credentials(api: Api) -> None:
    for method, path, body in (
        ("GET", "/tokens", None),
        ("POST", "/tokens", {"name": "x"}),
        ("DELETE", "/tokens/0123456789abcdef", None),
        ("GET", "/access?pipeline=webapp", None),
        ("POST", "/access", webapp_grant("user:bob", "admin")),
        ("DELETE", "/access", webapp_grant("user:bob", "admin")),
        ("GET", "/users", None),
        ("POST", "/users", {"name": "mallory", "admin": True}),
    ):
        answer = await api.request(method, path, None, body)
        assert answer.status_code == 401, (method, path, answer.text)
    assert await get_user(api.db, "mallory") is None
    assert await list_grants(api.db) == []


# --- access --------------------------------------------------------------------------


async def test_a_non_admin_cannot_grant_nor_revoke_and_nothing_changes(api: Api) -> None:
    alice = await api.person("alice")
    await api.person("bob")
    await grant(api.db, "webapp", None, "user:alice", "releaser", by="root")
    await grant(api.db, "webapp", None, "user:bob", "viewer", by="root")
    before = await list_grants(api.db)

    for body in (
        webapp_grant("user:alice", "admin"),
        webapp_grant("user:bob", "releaser", stage="prod"),
        {**webapp_grant("user:alice", "admin"), "pipeline": "*"},
    ):
        answer = await api.request("POST", "/access", alice, body)
        assert answer.status_code == 403, answer.text
        assert "not an admin" in answer.json()["detail"]
    answer = await api.request("DELETE", "/access", alice, webapp_grant("user:bob", "viewer"))
    assert answer.status_code == 403, answer.text
    assert await list_grants(api.db) == before


async def test_an_admins_grant_gives_the_grantee_the_role_and_revoking_takes_it_back(
    api: Api,
) -> None:
    root = await api.person("root", admin=True)
    bob = await api.person("bob")
    status = "/pipelines/webapp/status"
    assert (await api.request("GET", status, bob)).status_code == 403

    given = await api.request("POST", "/access", root, webapp_grant("user:bob", "viewer"))
    assert given.status_code == 200, given.text
    assert (given.json()["subject"], given.json()["granted_by"]) == ("user:bob", "root")
    assert (await api.request("GET", status, bob)).status_code == 200
    listed = await api.request("GET", "/access?pipeline=webapp", bob)
    assert [(g["subject"], g["role"]) for g in listed.json()] == [("user:bob", "viewer")]
    # Granting again is the same grant.
    again = await api.request("POST", "/access", root, webapp_grant("user:bob", "viewer"))
    assert again.json() == given.json()

    taken = await api.request("DELETE", "/access", root, webapp_grant("user:bob", "viewer"))
    assert taken.status_code == 204, taken.text
    assert (await api.request("GET", status, bob)).status_code == 403
    gone = await api.request("DELETE", "/access", root, webapp_grant("user:bob", "viewer"))
    assert gone.status_code == 404


async def test_a_pipeline_admin_grants_on_that_pipeline_only(api: Api) -> None:
    carol = await api.person("carol")
    bob = await api.person("bob")
    await grant(api.db, "webapp", None, "user:carol", "admin", by="root")

    given = await api.request(
        "POST", "/access", carol, webapp_grant("user:bob", "releaser", stage="prod")
    )
    assert given.status_code == 200, given.text
    assert given.json()["stage"] == "prod"
    for pipeline in ("billing", "*"):
        body = {**webapp_grant("user:bob", "viewer"), "pipeline": pipeline}
        assert (await api.request("POST", "/access", carol, body)).status_code == 403
    # A stage grant is not a view of the pipeline.
    assert (await api.request("GET", "/pipelines/webapp/status", bob)).status_code == 403


async def test_a_grant_to_an_identity_provider_group_reaches_its_members(api: Api) -> None:
    root = await api.person("root", admin=True)
    given = await api.request(
        "POST", "/access", root, webapp_grant("group:oidc:release-managers", "viewer")
    )
    assert given.status_code == 200, given.text

    api.signed_in_through_oidc("olga", "oidc:release-managers")
    assert (await api.request("GET", "/pipelines/webapp/status", None)).status_code == 200
    api.signed_in_through_oidc("oscar", "oidc:developers")
    assert (await api.request("GET", "/pipelines/webapp/status", None)).status_code == 403


async def test_an_invalid_subject_or_role_is_422_naming_its_field(api: Api) -> None:
    root = await api.person("root", admin=True)
    for method in ("POST", "DELETE"):
        for body, field in (
            (webapp_grant("alice", "viewer"), "body.subject"),
            (webapp_grant("user:", "viewer"), "body.subject"),
            (webapp_grant("user:alice smith", "viewer"), "body.subject"),
            (webapp_grant("user:alice", "owner"), "body.role"),
            (webapp_grant("user:alice", "viewer", stage=""), "body.stage"),
        ):
            answer = await api.request(method, "/access", root, body)
            assert invalid_fields(answer) == {field}, (method, body)
            assert field in answer.json()["detail"]
    assert await list_grants(api.db) == []


async def test_a_pipelines_viewers_list_its_grants_and_only_admins_list_every_grant(
    api: Api,
) -> None:
    root = await api.person("root", admin=True)
    bob = await api.person("bob")
    await grant(api.db, "webapp", None, "user:bob", "viewer", by="root")
    await grant(api.db, "billing", None, "user:carol", "admin", by="root")
    await grant(api.db, "*", None, "group:auditors", "viewer", by="root")

    mine = await api.request("GET", "/access?pipeline=webapp", bob)
    assert {(g["pipeline"], g["subject"]) for g in mine.json()} == {
        ("*", "group:auditors"),
        ("webapp", "user:bob"),
    }
    assert (await api.request("GET", "/access?pipeline=billing", bob)).status_code == 403
    assert (await api.request("GET", "/access", bob)).status_code == 403
    every = await api.request("GET", "/access", root)
    assert sorted(g["pipeline"] for g in every.json()) == ["*", "billing", "webapp"]


# --- people --------------------------------------------------------------------------


async def test_only_admins_list_and_add_people(api: Api) -> None:
    alice = await api.person("alice")
    assert (await api.request("GET", "/users", alice)).status_code == 403
    added = await api.request("POST", "/users", alice, {"name": "eve", "admin": True})
    assert added.status_code == 403
    assert await get_user(api.db, "eve") is None


async def test_a_new_person_signs_in_with_the_first_token_shown_once(api: Api) -> None:
    root = await api.person("root", admin=True)
    added = await api.request(
        "POST", "/users", root, {"name": "dave", "email": "dave@example.com", "admin": False}
    )
    assert added.status_code == 201, added.text
    assert added.headers["cache-control"] == "no-store"
    body = added.json()
    assert (body["user"]["name"], body["user"]["email"], body["user"]["is_admin"]) == (
        "dave",
        "dave@example.com",
        False,
    )
    me = await api.request("GET", "/me", body["token"]["token"])
    assert (me.json()["user"], me.json()["is_admin"]) == ("dave", False)

    listed = await api.request("GET", "/users", root)
    assert sorted(u["name"] for u in listed.json()) == ["dave", "root"]
    assert body["token"]["token"] not in listed.text


async def test_a_taken_name_is_409_and_a_malformed_one_422(api: Api) -> None:
    root = await api.person("root", admin=True)
    await api.person("dave")
    taken = await api.request("POST", "/users", root, {"name": "dave"})
    assert taken.status_code == 409, taken.text
    assert "'dave'" in taken.json()["detail"]
    assert invalid_fields(await api.request("POST", "/users", root, {"name": "da ve"})) == {
        "body.name"
    }
    assert invalid_fields(await api.request("POST", "/users", root, {"name": ""})) == {"body.name"}

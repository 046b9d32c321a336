"""The API's front door (issue 13): who a request comes from, and what it may do.

One real world for the whole file: the dev server, a control worker and an agent as
processes, the record in the data dir, and one release whose `prod` stage waits for
the approvals of alice and bob (policy `all`, so one approval leaves it waiting). The
API is the real app in this process (httpx's ASGI transport, the lifespan run), on
the same record and Temporal; OIDC tokens come from a test issuer on loopback whose
keys are made here. Nothing is mocked; background writes are waited for, not slept on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from joserfc.jwk import RSAKey
from temporalio.client import Client

from activities import record
from activities.record import Database, open_database, upgrade
from activities.record.identity import (
    TOKEN_PATTERN,
    add_user,
    create_token,
    disable_user,
    get_user,
    grant,
    list_grants,
    list_users,
    revoke_token,
)
from starter.api.app import create_app
from starter.api.oidc import OidcSettings
from starter.api.problems import PROBLEM_JSON
from starter.releases import ReleaseRef
from tests.conftest import Stack, wait_for
from tests.readable import histories_text, workflow_ids
from tests.test_oidc import AUDIENCE, Issuer, _serve, claims_at, segments, sign
from worker.settings import Settings
from workflows.release import ReleaseStatus
from workflows.release_workflow import ReleaseWorkflow

pytestmark = pytest.mark.e2e

PIPELINE = """
    name: {name}
    stages:
      - name: dev
        pool: POOL
        tasks: [{{name: build, script: "echo dev built"}}]
      - name: prod
        trigger: {{after_stages: [dev]}}
        pool: POOL
        pre_deployment:
          approvals: {{approvers: [alice, bob], policy: all}}
        tasks: [{{name: ship, script: "echo shipped"}}]
"""
# People of the record: alice and bob approve prod, victor and mallory are viewers of
# the pipeline, carol has no grant at all.
PEOPLE = ("alice", "bob", "victor", "mallory", "carol")
VIEWERS = ("victor", "mallory")
# Values for the fields of request bodies, so that a refusal is about who, never about
# input; what they ask is what a viewer must not get (victor making himself admin).
VALUES: dict[str, Any] = {
    "comment": "tried",
    "reason": "tried",
    "check": "smoke",
    "subject": "user:victor",
    "role": "admin",
    "name": "eve",
    "admin": True,
}
# The request id of alice's approval of prod (an action sent again with its id is
# answered with the first verdict, never done twice).
ALICE_APPROVES = "alice-approves-prod"
# Body fields that would let a caller say who they are.
PERSON_FIELDS = {"by", "user", "actor", "as", "as_user", "username", "approver", "created_by"}


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    url: str
    body: dict[str, Any] | None


@dataclass
class World:
    """The file's one release, the API in front of it, and everyone's credentials."""

    stack: Stack
    db: Database
    app: FastAPI
    http: httpx.AsyncClient
    issuer: Issuer
    key: RSAKey
    path: Path
    ref: ReleaseRef
    tokens: dict[str, str]
    # Every personal token made in this file, good or not: none may be kept in clear.
    made: list[str] = field(default_factory=list)

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    @property
    def release_url(self) -> str:
        return f"/api/v1/releases/{self.ref.pipeline}/{self.ref.number}"

    def stage_url(self, stage: str, action: str) -> str:
        return f"{self.release_url}/stages/{stage}/{action}"

    def routes(self, stages: tuple[str, ...] = ("prod",)) -> list[Route]:
        """Every route the OpenAPI schema lists but /healthz, its path parameters filled
        in with this release (once per stage in `stages`), each with a valid body."""
        schema = self.app.openapi()
        found = []
        for template, operations in schema["paths"].items():
            if template == "/healthz":
                continue
            for stage in stages if "{stage}" in template else stages[:1]:
                url = self.fill(template, stage)
                for method, operation in operations.items():
                    body = self.body_for(schema, operation)
                    found.append(Route(method.upper(), template, url, body))
        return found

    def fill(self, template: str, stage: str = "prod") -> str:
        """A path template with this release's values (a new parameter: a KeyError here)."""
        return template.format(
            pipeline=self.ref.pipeline,
            number=self.ref.number,
            stage=stage,
            token_id=self.tokens["alice"].split("_")[1],
            key=f"{self.ref.pipeline}/{self.ref.number}/dev/1/job/01-build.log",
            trigger="nightly",
            other=self.ref.number,
        )

    def body_for(self, schema: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any] | None:
        """A body the route takes (None: it takes none): each field it declares that
        VALUES has a value for."""
        content = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if content is None:
            return None
        name = content["schema"]["$ref"].rsplit("/", 1)[1]
        values = {**VALUES, "file": str(self.path), "pipeline": self.ref.pipeline}
        fields = schema["components"]["schemas"][name].get("properties", {})
        if "file" in fields:  # a release of a file, or of a stored pipeline: one of them
            values.pop("pipeline")
        return {key: values[key] for key in fields if key in values}

    def oidc_token(self, key: RSAKey | None = None, **claims: Any) -> str:
        """A JWT of the test issuer, valid now (the API judges it by the wall clock)."""
        return sign(claims_at(self.issuer, datetime.now(UTC), **claims), key or self.key)


@pytest.fixture(scope="module")
def issuer() -> Iterator[tuple[Issuer, RSAKey]]:
    """A test identity provider on 127.0.0.1: discovery and a JWKS of one RSA key."""
    key = RSAKey.generate_key(2048, parameters={"kid": "idp-1", "use": "sig"})
    documents: dict[str, Any] = {}
    server = _serve(documents, {})
    url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="idp", daemon=True
    )
    thread.start()
    test_issuer = Issuer(url=url, documents=documents, server=server)
    documents["/.well-known/openid-configuration"] = {
        "issuer": url,
        "jwks_uri": test_issuer.jwks_url,
    }
    test_issuer.publish(key)
    try:
        yield test_issuer, key
    finally:
        test_issuer.stop()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
async def world(
    client: Client,
    dev_server: str,
    tmp_path_factory: pytest.TempPathFactory,
    issuer: tuple[Issuer, RSAKey],
) -> AsyncIterator[World]:
    stack = Stack(client=client, address=dev_server, root=tmp_path_factory.mktemp("api-auth"))
    settings = Settings.from_env(stack.env())
    async with AsyncExitStack() as exits:
        exits.callback(stack.stop_all)
        await upgrade(settings.record_url)
        db = open_database(settings.record_url)
        exits.push_async_callback(db.close)
        await asyncio.gather(stack.start_worker(), stack.start_agent("a1"))
        path = stack.write_pipeline(PIPELINE.format(name=f"api-auth-{stack.suffix}"))
        ref, _ = await stack.create(path)

        tokens = {}
        for name in PEOPLE:
            person = await add_user(db, name)
            tokens[name] = (await create_token(db, person)).token.get_secret_value()
        for name in VIEWERS:
            await grant(db, ref.pipeline, None, f"user:{name}", "viewer", by="test")
        # OIDC people in the identity provider's group `dev` may view the pipeline.
        await grant(db, ref.pipeline, None, "group:oidc:dev", "viewer", by="test")

        oidc = OidcSettings(issuer=issuer[0].url, audience=AUDIENCE)
        app = create_app(settings, db=db, oidc=oidc, client=stack.client)
        await exits.enter_async_context(app.router.lifespan_context(app))
        http = await exits.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        )
        found = World(
            stack=stack,
            db=db,
            app=app,
            http=http,
            issuer=issuer[0],
            key=issuer[1],
            path=path,
            ref=ref,
            tokens=tokens,
            made=list(tokens.values()),
        )
        await wait_for(lambda: prod_waits(found), timeout=60, what="prod to wait for approval")
        yield found


# --- helpers ---------------------------------------------------------------------------


async def prod_waits(world: World) -> bool:
    """prod waits for its approvals, and the record has all of it."""
    recorded = await record.release(world.db, world.ref.pipeline, world.ref.number)
    return (
        recorded is not None
        and recorded.stage("prod").status == "waiting_for_approval"
        and await recorded_in_full(world)
    )


async def recorded_in_full(world: World) -> bool:
    """The record has every audit event the workflows hold, and their stage statuses."""
    status = await world.stack.status(world.ref)
    recorded = await record.release(world.db, world.ref.pipeline, world.ref.number)
    handle = world.stack.client.get_workflow_handle(world.ref.workflow_id)
    trail = await handle.query(ReleaseWorkflow.history)
    trail += [e for view in status.stages for a in view.attempts for e in a.events]
    history = await record.history(world.db, world.ref.pipeline, world.ref.number) or []
    return (
        recorded is not None
        and stage_statuses(recorded) == stage_statuses(status)
        and len(history) == len(trail)
    )


def stage_statuses(status: ReleaseStatus) -> dict[str, str]:
    return {view.name: view.status.value for view in status.stages}


async def snapshot(world: World) -> dict[str, Any]:
    """Everything an action could change: the record's release, its releases of the
    pipeline, the history the API shows, the workflow's status and its histories, the
    pipeline's grants and the people of the record."""
    status = await world.stack.status(world.ref)
    recorded = await record.release(world.db, world.ref.pipeline, world.ref.number)
    shown = await world.http.get(f"{world.release_url}/history", headers=world.auth("victor"))
    assert shown.status_code == 200, shown.text
    releases = await record.releases(world.db, pipeline=world.ref.pipeline, limit=200)
    events = {}
    for workflow_id in workflow_ids(status):
        history = await world.stack.client.get_workflow_handle(workflow_id).fetch_history()
        events[workflow_id] = len(history.events)
    return {
        "recorded": recorded.model_dump(mode="json") if recorded else None,
        "releases": [r.number for r in releases],
        "history": shown.json(),
        "status": status.model_dump(mode="json"),
        "workflow events": events,
        "grants": [g.model_dump(mode="json") for g in await list_grants(world.db)],
        "users": [u.model_dump(mode="json") for u in await list_users(world.db)],
    }


def new_in_the_trail(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """What `after` adds to `before`'s trail, once all else is the same and the trail
    kept every event it had (a request the API refuses is a refused event of its own)."""
    assert {k: v for k, v in after.items() if k != "history"} == {
        k: v for k, v in before.items() if k != "history"
    }
    kept = [e for e in after["history"] if e in before["history"]]
    assert kept == before["history"]
    return [e for e in after["history"] if e not in before["history"]]


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """`response` is an RFC 9457 problem of `status`; its body."""
    where = f"{response.request.method} {response.request.url.path}"
    assert response.status_code == status, f"{where}: {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith(PROBLEM_JSON), where
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"], where
    return body


async def answers(
    world: World, routes: list[Route], headers: dict[str, str]
) -> list[tuple[Route, httpx.Response]]:
    found = []
    for route in routes:
        response = await world.http.request(
            route.method, route.url, json=route.body, headers=headers
        )
        # A token an answer holds (POST /tokens) is one more that must be kept nowhere.
        world.made += [m.group(0) for m in TOKEN_PATTERN.finditer(response.text)]
        found.append((route, response))
    return found


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- 1. no credentials, bad credentials: 401 -------------------------------------------


async def test_every_route_without_credentials_answers_401_problem(world: World) -> None:
    routes = world.routes()
    assert len(routes) >= 15
    assert ("POST", world.stage_url("prod", "approve")) in {(r.method, r.url) for r in routes}
    for route, response in await answers(world, routes, {}):
        body = assert_problem(response, 401)
        assert body["title"] == "Unauthorized", route
        assert response.headers["www-authenticate"] == "Bearer", route
    healthz = await world.http.get("/healthz")
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})


async def test_only_healthz_answers_anonymously(world: World) -> None:
    # Every route the app serves, not only those the schema lists.
    served = {
        (method, route.path)
        for route in world.app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"
    }
    anonymous = set()
    for method, template in sorted(served):
        response = await world.http.request(method, world.fill(template))
        if response.status_code != 401:
            anonymous.add((method, template))
    # The OpenAPI document too is for a signed-in person.
    assert anonymous == {("GET", "/healthz")}


async def test_malformed_unknown_revoked_and_expired_tokens_answer_401_everywhere(
    world: World,
) -> None:
    alice = await get_user(world.db, "alice")
    assert alice is not None
    revoked = await create_token(world.db, alice, name="revoked")
    await revoke_token(world.db, alice, revoked.token_id)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    expired = await create_token(world.db, alice, expires_in=timedelta(minutes=1), now=an_hour_ago)
    dora = await add_user(world.db, "dora")
    disabled = await create_token(world.db, dora)
    await grant(world.db, world.ref.pipeline, None, "user:dora", "viewer", by="test")
    await disable_user(world.db, "dora")
    world.made += [t.token.get_secret_value() for t in (revoked, expired, disabled)]
    good = world.tokens["alice"]
    token_id = good.split("_")[1]
    bad = {
        "basic scheme": f"Basic {b64('alice:' + good)}",
        "bearer without a token": "Bearer",
        "bearer and spaces": "Bearer    ",
        "the token without a scheme": good,
        "malformed token": "Bearer sft_nothex_short",
        "token with its secret cut short": f"Bearer {good[:-1]}",
        "unknown token": f"Bearer sft_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}",
        "known id, wrong secret": f"Bearer sft_{token_id}_{secrets.token_urlsafe(32)}",
        "revoked token": f"Bearer {revoked.token.get_secret_value()}",
        "expired token": f"Bearer {expired.token.get_secret_value()}",
        "disabled user's token": f"Bearer {disabled.token.get_secret_value()}",
        "not a JWT": "Bearer not.a.jwt",
    }
    routes = world.routes()
    for kind, header in bad.items():
        for route, response in await answers(world, routes, {"Authorization": header}):
            assert response.status_code == 401, f"{kind}: {route}: {response.text}"
            assert_problem(response, 401)
    # The same routes with a viewer's good token are not refused as unauthenticated:
    # the 401s above are the credentials', not the routes'.
    for route, response in await answers(world, routes, world.auth("victor")):
        assert response.status_code != 401, f"{route}: {response.text}"


# --- 2. a viewer's actions: 403, and nothing changes ---------------------------------

# What a viewer may ask that is not an action on a release: check a pipeline file, make
# a token of their own; and another person's token is as unknown to them as none (404).
NOT_ACTIONS = {
    ("POST", "/api/v1/pipelines/validate"): 200,
    ("POST", "/api/v1/tokens"): 201,
    ("DELETE", "/api/v1/tokens/{token_id}"): 404,
}


async def test_every_action_of_a_viewer_is_403_and_changes_nothing(world: World) -> None:
    await wait_for(lambda: recorded_in_full(world), timeout=30, what="the record to catch up")
    before = await snapshot(world)
    actions = [r for r in world.routes(stages=("dev", "prod")) if r.method != "GET"]
    assert len(actions) >= 19
    forbidden = []
    for route, response in await answers(world, actions, world.auth("victor")):
        expected = NOT_ACTIONS.get((route.method, route.template))
        if expected is not None:
            assert response.status_code == expected, f"{route}: {response.text}"
            continue
        body = assert_problem(response, 403)
        assert "victor" in body["detail"], (route, body)
        forbidden.append(route)
    after = await snapshot(world)

    # The release, its workflows, the grants and the people are as they were; the trail
    # has each refused request on the release, with how victor signed in, and no more.
    new = new_in_the_trail(before, after)
    on_the_release = [r for r in forbidden if r.url.startswith(world.release_url)]
    assert len(new) == len(on_the_release) >= 17
    victor = f"token {world.tokens['victor'].split('_')[1]}"
    assert {(e["actor"], e["outcome"], e["via"]) for e in new} == {("victor", "refused", victor)}
    alice = await world.http.get("/api/v1/me", headers=world.auth("alice"))
    assert alice.status_code == 200, "victor revoked alice's token"


# --- 3. an approver decides as themself, and only they do -----------------------------


async def test_no_request_body_can_name_a_person(world: World) -> None:
    schema = world.app.openapi()
    bodies = 0
    for template, operations in schema["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                name = media["schema"]["$ref"].rsplit("/", 1)[1]
                properties = set(schema["components"]["schemas"][name]["properties"])
                assert not properties & PERSON_FIELDS, (method, template, properties)
                bodies += 1
    assert bodies >= 10


async def test_an_approval_counts_for_the_tokens_user_whoever_the_request_names(
    world: World,
) -> None:
    response = await world.http.post(
        world.stage_url("prod", "approve"),
        json={
            "comment": "looks good",
            "request_id": ALICE_APPROVES,
            "by": "bob",
            "actor": "bob",
            "user": "bob",
        },
        headers={**world.auth("alice"), "X-Stageflow-User": "bob"},
        params={"by": "bob", "user": "bob"},
    )
    assert response.status_code == 200, response.text
    event = response.json()["event"]
    assert (event["actor"], event["action"], event["outcome"]) == ("alice", "approve", "accepted")

    async def approvals_recorded() -> list[dict[str, Any]]:
        """What people's requests did to prod, as the API's history shows it."""
        history = await world.http.get(f"{world.release_url}/history", headers=world.auth("bob"))
        return [e for e in history.json() if e["outcome"] == "accepted" and e["via"]]

    # The trail says alice approved, signed in with her token; nobody did as bob.
    approvals = await wait_for(approvals_recorded, what="the approval in the record")
    alice = f"token {world.tokens['alice'].split('_')[1]}"
    assert [(e["actor"], e["action"], e["stage"], e["via"]) for e in approvals] == [
        ("alice", "approve", "prod", alice)
    ]
    # The workflow counts alice's entry, and still waits for bob's.
    latest = (await world.stack.status(world.ref)).stage("prod").latest
    assert latest is not None
    approval = latest.approval("pre")
    assert approval is not None
    assert [(d.by, d.outcome) for d in approval.decisions] == [("alice", "accepted")]
    assert (approval.status, approval.waiting_for) == ("pending", ["bob"])


async def test_another_persons_request_id_does_not_make_their_decision_yours(
    world: World,
) -> None:
    # alice's approval (sent again with its id: answered, not done twice)...
    again = await world.http.post(
        world.stage_url("prod", "approve"),
        json={"request_id": ALICE_APPROVES},
        headers=world.auth("alice"),
    )
    assert again.status_code == 200, again.text
    assert again.json()["event"]["actor"] == "alice"
    # ...and bob, who reads its id in the history, sends his approval with it.
    response = await world.http.post(
        world.stage_url("prod", "approve"),
        json={"request_id": ALICE_APPROVES},
        headers=world.auth("bob"),
    )
    answered_as_bob = response.status_code == 200 and response.json()["event"]["actor"] == "bob"
    refused = response.status_code in (409, 422)
    history = await world.http.get(f"{world.release_url}/history", headers=world.auth("bob"))
    alice_id = world.tokens["alice"].split("_")[1]
    via = [e["via"] for e in history.json() if e["request_id"] == ALICE_APPROVES]
    assert (answered_as_bob or refused, via) == (True, [f"token {alice_id}"]), (
        f"bob was answered {response.status_code} {response.text}; bob's id is "
        f"{world.tokens['bob'].split('_')[1]}"
    )


async def test_a_person_who_is_not_the_stages_approver_is_refused_403(world: World) -> None:
    await wait_for(lambda: recorded_in_full(world), timeout=30, what="the record to catch up")
    before = await snapshot(world)
    attempts = [
        ("mallory", "prod", "may view the release, approves nothing"),
        ("carol", "prod", "has no grant and approves nothing"),
        ("bob", "dev", "approves prod, not dev"),
    ]
    for user, stage, why in attempts:
        for action, body in (("approve", {}), ("reject", {"comment": "no"})):
            response = await world.http.post(
                world.stage_url(stage, action), json=body, headers=world.auth(user)
            )
            detail = assert_problem(response, 403)["detail"]
            assert user in detail, f"{user} ({why}) {action} {stage}: {detail}"
    after = await snapshot(world)
    new = new_in_the_trail(before, after)
    assert sorted((e["actor"], e["action"], e["stage"], e["outcome"]) for e in new) == sorted(
        (user, action, stage, "refused")
        for user, stage, _ in attempts
        for action in ("approve", "reject")
    )


# --- 5. OIDC through the API -----------------------------------------------------------


async def test_oidc_token_of_the_issuer_signs_in_with_its_groups(world: World) -> None:
    token = world.oidc_token(preferred_username="olivia", groups=["dev", "release-managers"])
    headers = {"Authorization": f"Bearer {token}"}
    me = await world.http.get("/api/v1/me", headers=headers)
    assert me.status_code == 200, me.text
    assert me.json() == {
        "user": "olivia",
        "groups": ["oidc:dev", "oidc:release-managers"],
        "via": f"oidc {world.issuer.url}",
        "is_admin": False,
    }
    # Her group `oidc:dev` is a viewer of the pipeline: she reads the release...
    shown = await world.http.get(world.release_url, headers=headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["number"] == world.ref.number
    # ...and someone of the issuer without that group does not.
    outsider = world.oidc_token(preferred_username="oscar", groups=["ops"])
    refused = await world.http.get(
        world.release_url, headers={"Authorization": f"Bearer {outsider}"}
    )
    assert "oscar" in assert_problem(refused, 403)["detail"]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong audience", "wrong audience 'another-app'"),
        ("wrong issuer", "wrong issuer 'https://idp.evil.example'"),
        ("expired", "expired at"),
        ("alg none", "algorithm 'none' is not allowed"),
        ("key not in the JWKS", "unknown key id 'stranger'"),
        ("published kid, other key", "bad signature"),
    ],
)
async def test_oidc_tokens_the_issuer_did_not_give_us_answer_401(
    world: World, case: str, reason: str
) -> None:
    # Every forgery names alice, an approver of prod: accepted, it would decide as her.
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    claims = claims_at(world.issuer, datetime.now(UTC), preferred_username="alice")
    tokens = {
        "wrong audience": lambda: world.oidc_token(aud="another-app", preferred_username="alice"),
        "wrong issuer": lambda: world.oidc_token(
            iss="https://idp.evil.example", preferred_username="alice"
        ),
        "expired": lambda: sign(
            claims_at(world.issuer, an_hour_ago, preferred_username="alice"), world.key
        ),
        "alg none": lambda: segments({"alg": "none", "kid": "idp-1"}, claims) + ".",
        "key not in the JWKS": lambda: sign(
            claims, RSAKey.generate_key(2048, parameters={"kid": "stranger"})
        ),
        "published kid, other key": lambda: sign(
            claims, RSAKey.generate_key(2048, parameters={"kid": "idp-1"})
        ),
    }
    headers = {"Authorization": f"Bearer {tokens[case]()}"}
    me = await world.http.get("/api/v1/me", headers=headers)
    assert assert_problem(me, 401)["detail"].startswith(f"OIDC token refused: {reason}"), me.text
    approve = await world.http.post(world.stage_url("prod", "approve"), json={}, headers=headers)
    assert assert_problem(approve, 401)["detail"].startswith("OIDC token refused"), approve.text


# --- 4. no token in clear anywhere (last: it reads what the file's requests left) -----


async def test_tokens_are_kept_nowhere_in_clear(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = await get_user(world.db, "alice")
    assert alice is not None
    fresh = await create_token(world.db, alice, name="leak check")
    plaintext = fresh.token.get_secret_value()
    world.made.append(plaintext)
    headers = {"Authorization": f"Bearer {plaintext}"}
    for url in ("/api/v1/me", world.release_url, f"{world.release_url}/history"):
        assert (await world.http.get(url, headers=headers)).status_code == 200
    # A decision the workflow refuses (nothing to resume) still reaches its history.
    marker = f"leak-check-{secrets.token_hex(4)}"
    resumed = await world.http.post(
        world.stage_url("prod", "resume"), json={"comment": marker}, headers=headers
    )
    assert_problem(resumed, 409)
    status = await world.stack.status(world.ref)

    data_dir = world.stack.data_dir
    database = data_dir / "stageflow.db"
    stored = b"".join(
        p.read_bytes() for p in (database, database.with_name("stageflow.db-wal")) if p.exists()
    )
    files = {
        str(p): p.read_bytes()
        for root in (data_dir, world.stack.root)
        for p in sorted(root.rglob("*"))
        if p.is_file() and (root == data_dir or p.suffix == ".log")
    }
    histories = await histories_text(world.stack.client, status)

    # The searches can find: the record holds the token's id and the hash of its secret,
    # the task logs are in the data dir, the worker logged, the history has the marker.
    secret = plaintext.split("_", 2)[2]
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored
    assert fresh.token_id.encode() in stored
    assert any(b"dev built" in text for text in files.values())
    assert (world.stack.root / "worker.log").stat().st_size > 0
    assert marker in histories and "alice" in histories

    for token in world.made:
        for clear in (token, token.split("_", 2)[2]):
            assert clear.encode() not in stored, "a token in the record's database"
            leaked = [name for name, text in files.items() if clear.encode() in text]
            assert not leaked, f"a token in {leaked}"
            assert clear not in histories, "a token in a workflow history"
            assert clear not in caplog.text, "a token in the API's logs"
